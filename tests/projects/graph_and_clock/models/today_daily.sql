{{ config(meta={'orchestra_dbt': {'volatile': 'daily'}}) }}
select cast({{ dbt.current_timestamp() }} as date) as date_day
