-- Orders whose customer_id matches no customer. Any returned row fails the test.
select
    orders.order_id,
    orders.customer_id
from {{ ref('stg_orders') }} as orders
left join {{ ref('stg_customers') }} as customers
    on orders.customer_id = customers.customer_id
where customers.customer_id is null
