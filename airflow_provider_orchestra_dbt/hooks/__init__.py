"""Airflow hooks of the Orchestra dbt provider.

Import hooks from their modules, e.g.
``from airflow_provider_orchestra_dbt.hooks.orchestra_dbt import OrchestraDbtHook``; this
package module stays empty so that importing it is free.
"""
