"""Airflow provider that runs dbt Core and rebuilds only what changed."""

__version__ = "0.1.0"
