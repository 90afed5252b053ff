select
    id as payment_id,
    order_id,
    lower(method) as method,
    amount_cents,
    {{ cents_to_dollars('amount_cents') }} as amount,
    _loaded_at as loaded_at
from {{ source('raw', 'payments') }}
