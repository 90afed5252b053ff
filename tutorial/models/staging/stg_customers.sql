select
    id as customer_id,
    name as customer_name,
    upper(country_code) as country_code,
    _loaded_at as loaded_at
from {{ source('raw', 'customers') }}
