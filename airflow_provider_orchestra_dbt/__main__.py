import sys

from airflow_provider_orchestra_dbt.cli import main

sys.exit(main())
