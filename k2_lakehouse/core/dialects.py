"""The SQL texts in other engines' dialects: sqlglot transpiles DuckDB's, plus the functions it leaves alone."""

from __future__ import annotations

import sqlglot
from sqlglot import exp

# DuckDB functions sqlglot passes through unchanged, and their Spark names (same arguments, same meaning).
_SPARK_NAMES = {"EPOCH_US": "UNIX_MICROS"}


def to_spark(sql: str) -> str:
    """One DuckDB SQL text as Spark SQL."""

    def rename(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Anonymous) and node.name.upper() in _SPARK_NAMES:
            return exp.Anonymous(this=_SPARK_NAMES[node.name.upper()], expressions=node.expressions)
        return node

    tree = sqlglot.parse_one(sql, read="duckdb").transform(rename)
    return tree.sql(dialect="spark", comments=False)
