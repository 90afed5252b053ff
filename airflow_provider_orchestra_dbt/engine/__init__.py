"""The decision engine: graph, fingerprints, planner and outcomes. No Airflow imports here."""
