select name, sum(amount) as total from {{ ref('stg_items') }} group by name
