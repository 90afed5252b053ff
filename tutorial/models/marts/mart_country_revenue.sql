select
    coalesce(region, 'Unknown') as region,
    country_code,
    country_name,
    count(*) as customer_count,
    sum(order_count) as order_count,
    sum(lifetime_value) as lifetime_value
from {{ ref('dim_customers') }}
group by coalesce(region, 'Unknown'), country_code, country_name
