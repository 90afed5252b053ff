{#- Round a monetary expression to two decimal places, portably. -#}
{% macro round_money(expr) -%}
    cast(round({{ expr }}, 2) as numeric(12, 2))
{%- endmacro %}
