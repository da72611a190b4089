-- The stack's databases and least-privilege roles, run once by docker/postgres-init.sh as the superuser.
--   airflow, mlflow: each owns its own database and nothing else.
--   kronos owner:    owns the forecasts database and its schema; the only role that runs migrations.
--   kronos worker:   what Airflow workers (GPU hosts included) connect as: reads and writes rows of the
--                    forecasts tables (bars, runs, forecasts, failures), cannot create, alter or drop them.
-- psql variables (-v): names airflow_role, mlflow_role, kronos_db, kronos_owner, kronos_worker and the
-- passwords airflow_password, mlflow_password, kronos_owner_password, kronos_worker_password.
\set ON_ERROR_STOP on
CREATE ROLE :"airflow_role" LOGIN PASSWORD :'airflow_password';
CREATE ROLE :"mlflow_role" LOGIN PASSWORD :'mlflow_password';
CREATE ROLE :"kronos_owner" LOGIN PASSWORD :'kronos_owner_password';
CREATE ROLE :"kronos_worker" LOGIN PASSWORD :'kronos_worker_password';
CREATE DATABASE :"airflow_role" OWNER :"airflow_role";
CREATE DATABASE :"mlflow_role" OWNER :"mlflow_role";
CREATE DATABASE :"kronos_db" OWNER :"kronos_owner";
REVOKE ALL ON DATABASE :"airflow_role", :"mlflow_role", :"kronos_db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"kronos_db" TO :"kronos_worker";
\connect :"kronos_db"
-- The schema belongs to the database owner (PostgreSQL 15+); nobody else may create objects in it.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"kronos_worker";
ALTER DEFAULT PRIVILEGES FOR ROLE :"kronos_owner" IN SCHEMA public
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"kronos_worker";
ALTER DEFAULT PRIVILEGES FOR ROLE :"kronos_owner" IN SCHEMA public
  GRANT USAGE, SELECT ON SEQUENCES TO :"kronos_worker";
