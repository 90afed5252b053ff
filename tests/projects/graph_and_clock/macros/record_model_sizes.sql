{% macro record_model_sizes(relation) %}
  {%- if execute -%}
    {%- set rows = [] -%}
    {%- for node in graph.nodes.values() | sort(attribute='unique_id') -%}
      {%- if node.resource_type == 'model' -%}
        {%- do rows.append("('" ~ node.unique_id ~ "', " ~ (node.raw_code | length) ~ ")") -%}
      {%- endif -%}
    {%- endfor -%}
    insert into {{ relation }} (unique_id, code_length) values {{ rows | join(', ') }}
  {%- endif -%}
{% endmacro %}
