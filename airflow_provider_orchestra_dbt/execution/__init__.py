"""Running a plan: the run options, the session that coordinates a run, its locks, and the
executor interface the local dbt worker implements. Imports no Airflow.
"""
