"""Task functions the DAGs call (ingest, forecast, persist, log, evaluate), importable without Airflow."""
