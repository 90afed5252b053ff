"""Triggers the operators defer to (the Airflow layer)."""
