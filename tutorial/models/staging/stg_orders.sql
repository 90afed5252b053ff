select
    id as order_id,
    customer_id,
    order_date,
    lower(status) as status,
    _loaded_at as loaded_at
from {{ source('raw', 'orders') }}
