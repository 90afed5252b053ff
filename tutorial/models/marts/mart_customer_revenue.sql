select
    customers.customer_id,
    customers.customer_name,
    customers.region,
    count(orders.order_id) as order_count,
    sum(case when orders.status = 'completed' then orders.total_amount else 0 end) as completed_revenue,
    coalesce(sum(orders.total_amount), 0) as gross_revenue,
    max(orders.order_date) as last_order_date
from {{ ref('dim_customers') }} as customers
left join {{ ref('fct_orders') }} as orders
    on customers.customer_id = orders.customer_id
group by customers.customer_id, customers.customer_name, customers.region
