{#- Convert an integer amount of cents into dollars (rounded by round_money). -#}
{% macro cents_to_dollars(column) -%}
    {{ round_money(column ~ ' / 100.0') }}
{%- endmacro %}
