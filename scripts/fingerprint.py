"""Print a content fingerprint of every Iceberg table's day partition: rows and an order-independent hash.

Two runs of the same day must print the same lines (scripts/acceptance.sh diffs them).
Usage: .venv/bin/python scripts/fingerprint.py YYYY-MM-DD
"""

import datetime as dt
import sys

from k2_lakehouse.core import iceberg
from k2_lakehouse.core.contracts import TABLES
from k2_lakehouse.core.engine import DuckDBEngine
from k2_lakehouse.core.settings import Settings

day = dt.date.fromisoformat(sys.argv[1])
cat = iceberg.catalog(Settings.from_env())
with DuckDBEngine() as engine:
    for contract in TABLES:
        table = cat.load_table(contract.identifier)
        engine.register_files("t", iceberg.partition_files(table, contract, day), contract.arrow_schema)
        # ingested_at is the consumer's clock, not content the offload decides
        columns = [c for c in contract.column_names if c != "ingested_at"]
        rows, digest = engine.con.execute(f"SELECT count(*), sum(hash({', '.join(columns)})) FROM t").fetchone()
        print(f"{contract.qualified_name:24} {day}  rows={rows:>10,}  content={digest}")
