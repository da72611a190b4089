#!/bin/sh
# Creates the three databases of the stack (Airflow metadata, MLflow backend, forecasts), owned by
# POSTGRES_USER, on the first start of the PostgreSQL volume.
set -eu
for database in airflow mlflow kronos; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
       -c "CREATE DATABASE \"$database\" OWNER \"$POSTGRES_USER\""
done
