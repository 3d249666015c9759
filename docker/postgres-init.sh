#!/bin/bash
# Run once by the postgres image's entrypoint (/docker-entrypoint-initdb.d), on an empty data volume: one
# role per database K2 uses, each owner of its own database only, with no other power (not superuser, no
# CREATEDB, CREATEROLE or REPLICATION) — `k2_dagster` owns `dagster` (Dagster storage, K2_POSTGRES_URL) and
# `k2_catalog` owns `iceberg` (the Iceberg catalog, K2_ICEBERG_CATALOG_URI). CONNECT is revoked from PUBLIC,
# so each role reaches its own database only. `k2 services up` makes the same roles on the local cluster.
# The passwords are passed as psql variables (:'...' quotes them), never pasted into the SQL text.
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v dagster_password="${POSTGRES_DAGSTER_PASSWORD:?POSTGRES_DAGSTER_PASSWORD is not set}" \
  -v catalog_password="${POSTGRES_CATALOG_PASSWORD:?POSTGRES_CATALOG_PASSWORD is not set}" <<'SQL'
CREATE ROLE k2_dagster LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'dagster_password';
CREATE ROLE k2_catalog LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'catalog_password';
CREATE DATABASE dagster OWNER k2_dagster;
CREATE DATABASE iceberg OWNER k2_catalog;
REVOKE ALL ON DATABASE dagster FROM PUBLIC;
REVOKE ALL ON DATABASE iceberg FROM PUBLIC;
REVOKE CONNECT ON DATABASE postgres, template1 FROM PUBLIC;
SQL
