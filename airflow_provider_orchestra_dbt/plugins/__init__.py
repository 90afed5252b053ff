"""The Airflow UI plugin: serves each try's run picture from the api-server."""
