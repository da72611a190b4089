#!/bin/sh
# Creates the stack's databases and roles (docker/postgres-roles.sql) on the first start of the
# PostgreSQL volume. The superuser (POSTGRES_USER) is used here only; every service has its own role.
set -eu
psql --username "$POSTGRES_USER" --dbname postgres \
  -v airflow_role=airflow -v mlflow_role=mlflow \
  -v kronos_db=kronos -v kronos_owner=kronos_owner -v kronos_worker=kronos_worker \
  -v airflow_password="$AIRFLOW_DB_PASSWORD" -v mlflow_password="$MLFLOW_DB_PASSWORD" \
  -v kronos_owner_password="$KRONOS_OWNER_DB_PASSWORD" -v kronos_worker_password="$KRONOS_WORKER_DB_PASSWORD" \
  -f /docker-entrypoint-initdb.d/roles.sql.in
