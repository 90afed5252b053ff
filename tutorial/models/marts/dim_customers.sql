select
    customers.customer_id,
    customers.customer_name,
    customers.country_code,
    countries.country_name,
    countries.region,
    customer_orders.first_order_date,
    customer_orders.last_order_date,
    coalesce(customer_orders.order_count, 0) as order_count,
    coalesce(customer_orders.lifetime_value, 0) as lifetime_value
from {{ ref('stg_customers') }} as customers
left join {{ ref('int_customer_orders') }} as customer_orders
    on customers.customer_id = customer_orders.customer_id
left join {{ ref('stg_countries') }} as countries
    on customers.country_code = countries.country_code
