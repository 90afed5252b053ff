select
    customer_id,
    min(order_date) as first_order_date,
    max(order_date) as last_order_date,
    count(*) as order_count,
    sum(case when status = 'returned' then 0 else total_amount end) as lifetime_value
from {{ ref('int_orders_enriched') }}
group by customer_id
