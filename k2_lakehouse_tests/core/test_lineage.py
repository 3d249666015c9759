"""The declared column lineage (contracts.lineage) is complete and points at columns that exist. Pure: no services."""

from __future__ import annotations

from k2_lakehouse.core.contracts import (
    GOLD_TABLES, HOT_TABLES, SILVER_REJECTED, SILVER_TRADES, TABLES, HotTable, TableContract, lineage,
)
from k2_lakehouse.core.engine import sql_text

BRONZE = tuple(hot.bronze for hot in HOT_TABLES.values())
# Each layer's upstream tables (the asset graph's edges) and the SQL texts that compute it.
UPSTREAM = {
    **{hot.bronze.qualified_name: ({hot.name}, ()) for hot in HOT_TABLES.values()},
    **{c.qualified_name: ({b.qualified_name for b in BRONZE}, ("silver_normalized", f"silver_{c.name}"))
       for c in (SILVER_TRADES, SILVER_REJECTED)},
    **{c.qualified_name: ({SILVER_TRADES.qualified_name}, ("gold_bars_from_trades",)) for c in GOLD_TABLES.values()},
}
# Columns that no upstream column feeds: the exchange is the constant of the bronze table a row came from.
CONSTANTS = {(SILVER_TRADES.qualified_name, "exchange"), (SILVER_REJECTED.qualified_name, "exchange")}


def _name(table: TableContract | HotTable) -> str:
    return table.name if isinstance(table, HotTable) else table.qualified_name


def test_every_column_of_every_derived_table_has_lineage() -> None:
    assert {c.qualified_name for c in TABLES} == set(UPSTREAM)
    for contract in TABLES:
        declared = lineage(contract)
        assert set(declared) == set(contract.column_names), contract.qualified_name
        empty = {(contract.qualified_name, col) for col, sources in declared.items() if not sources}
        assert empty <= CONSTANTS, f"{contract.qualified_name}: no lineage for {sorted(c for _, c in empty - CONSTANTS)}"


def test_every_source_column_exists_upstream() -> None:
    for contract in TABLES:
        tables, sql_names = UPSTREAM[contract.qualified_name]
        sql = "\n".join(sql_text(n) for n in sql_names)
        for column, sources in lineage(contract).items():
            named = [(_name(s.table), s.column) for s in sources]
            assert len(set(named)) == len(named), f"{contract.qualified_name}.{column}: a source twice"
            for s in sources:
                where = f"{contract.qualified_name}.{column} <- {_name(s.table)}.{s.column}"
                assert _name(s.table) in tables, f"{where}: not an upstream of {contract.qualified_name}"
                assert s.column in s.table.column_names, f"{where}: no such column"
                assert not sql or s.column in sql, f"{where}: the SQL never reads it"


def test_bronze_is_an_identity_copy_of_its_hot_table() -> None:
    for hot in HOT_TABLES.values():
        assert {c: [(s.table, s.column) for s in src] for c, src in lineage(hot.bronze).items()} == {
            c: [(hot, c)] for c in hot.column_names
        }


def test_silver_symbol_comes_from_each_exchanges_own_symbol_column() -> None:
    sources = {(_name(s.table), s.column) for s in lineage(SILVER_TRADES)["symbol"]}
    assert sources == {(hot.bronze.qualified_name, hot.symbol_column) for hot in HOT_TABLES.values()}
    gold_open = {(_name(s.table), s.column) for s in lineage(GOLD_TABLES["1h"])["open"]}
    assert ("silver.trades", "price") in gold_open
