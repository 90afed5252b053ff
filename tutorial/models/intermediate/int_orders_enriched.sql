select
    orders.order_id,
    orders.customer_id,
    orders.order_date,
    orders.status,
    coalesce(payments.credit_card_amount, 0) as credit_card_amount,
    coalesce(payments.bank_transfer_amount, 0) as bank_transfer_amount,
    coalesce(payments.gift_card_amount, 0) as gift_card_amount,
    coalesce(payments.total_amount, 0) as total_amount,
    payments.order_id is not null as is_paid
from {{ ref('stg_orders') }} as orders
left join {{ ref('int_payments_pivoted') }} as payments
    on orders.order_id = payments.order_id
