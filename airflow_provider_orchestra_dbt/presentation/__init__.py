"""What a run shows: the report and its log tables, and the HTML picture. Imports no Airflow."""
