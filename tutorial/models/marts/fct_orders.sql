select
    order_id,
    customer_id,
    order_date,
    status,
    credit_card_amount,
    bank_transfer_amount,
    gift_card_amount,
    total_amount,
    is_paid
from {{ ref('int_orders_enriched') }}
