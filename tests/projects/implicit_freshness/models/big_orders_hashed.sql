select id, amount from {{ source('raw', 'big_orders_hashed') }}
