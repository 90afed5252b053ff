{# Only words: current_date in a Jinja comment, #}
-- now() in a SQL comment,
select 'current_date' as label, "amount" as current_amount /* today() */
from {{ ref('stg_items') }}
