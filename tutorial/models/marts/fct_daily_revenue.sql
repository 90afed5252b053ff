{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='order_date',
    )
}}

{#- Orders before this date are ignored; override with --vars '{revenue_start_date: 2024-06-01}'. -#}
{%- set start_date = var('revenue_start_date', '1900-01-01') %}
{#- Set by the Airflow DAG: a run (or a backfill) re-aggregates exactly its data interval. -#}
{%- set interval_start = var('data_interval_start', none) %}
{%- set interval_end = var('data_interval_end', none) %}

select
    order_date,
    count(*) as order_count,
    sum(total_amount) as revenue
from {{ ref('int_orders_enriched') }}
where status <> 'returned'
  and order_date >= cast('{{ start_date }}' as date)
{%- if interval_start and interval_end %}
  and order_date >= cast('{{ interval_start }}' as date)
  and order_date < cast('{{ interval_end }}' as date)
{%- elif is_incremental() %}
  -- Re-aggregate the latest loaded day (it may have grown) and anything newer.
  and order_date >= (
      select coalesce(max(order_date), cast('{{ start_date }}' as date)) from {{ this }}
  )
{%- endif %}
group by order_date
