select
    method,
    count(*) as payment_count,
    sum(amount) as total_amount,
    {{ round_money('avg(amount)') }} as average_amount
from {{ ref('stg_payments') }}
group by method
