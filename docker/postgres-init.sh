#!/bin/bash
# Run once by the postgres image's entrypoint (/docker-entrypoint-initdb.d), on an empty data volume:
# the role `k2` (password POSTGRES_K2_PASSWORD) and the two databases K2 uses, owned by it —
# `dagster` (Dagster storage, K2_POSTGRES_URL) and `iceberg` (the Iceberg catalog, K2_ICEBERG_CATALOG_URI).
# The password is passed as a psql variable (:'k2_password' quotes it), never pasted into the SQL text.
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v k2_password="${POSTGRES_K2_PASSWORD:?POSTGRES_K2_PASSWORD is not set}" <<'SQL'
CREATE ROLE k2 LOGIN PASSWORD :'k2_password';
CREATE DATABASE dagster OWNER k2;
CREATE DATABASE iceberg OWNER k2;
SQL
