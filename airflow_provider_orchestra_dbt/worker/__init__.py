"""The dbt worker subprocess (``dbt_worker.py``) and the parent side of its protocol."""
