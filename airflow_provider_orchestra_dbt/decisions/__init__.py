"""Pure decisions: the graph, fingerprints, freshness, the planner and outcomes.

Nothing here runs dbt, touches a store or imports Airflow; see ``docs/design.md``.
"""
