"""Every SQL statement the product sends to ClickHouse also runs on a current ClickHouse (chDB, in process).

The statements are not a hand-kept list: the product's real paths run against the real 18.16 hot tier
through recording clients (`k2_lakehouse_tests.recording`), and every distinct statement they sent is then
replayed in chDB: the DDL, the INSERTs (with the hot tables' real rows, escaped by clickhouse-driver), then
every SELECT with its parameters substituted by clickhouse-driver's own code. Each must run there, and a
SELECT must give the same rows on both servers over the same data.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict

import pytest

from k2_lakehouse import bench, live
from k2_lakehouse.core import bronze, feed, freshness, hot_tier, iceberg, reconcile, retention, sensing, services, verify
from k2_lakehouse.core.contracts import BINANCE, GOLD_TABLES, HOT_TABLES
from k2_lakehouse_tests.recording import Call, ChdbReplay, Recorder, arrow_rows, insert_target, normalize, render_values
from k2_lakehouse_tests.support import Lake

DAY = dt.date(2026, 3, 14)

# Results that legitimately differ between two servers: the server's own version and its live system tables.
_SERVER_SPECIFIC = ("version()", "system.")
# Redelivered copies of a feed position are identical messages except `ingested_at` (when the consumer wrote
# each copy): `LIMIT 1 BY` position may keep either copy, so that column is not compared there.
_PER_COPY_COLUMNS = ("ingested_at",)


@pytest.fixture(scope="module")
def chdb_session(tmp_path_factory):
    from chdb import session  # one chDB session per process: this module owns it

    sess = session.Session(str(tmp_path_factory.mktemp("chdb")))
    try:
        yield sess
    finally:
        sess.close()


def _drive_the_product(lake: Lake) -> None:
    """The product's paths that talk to ClickHouse, with the hot tier's real clients (recorded)."""
    settings = lake.settings
    quiet = lambda *_: None  # noqa: E731

    # `k2 services up` creates the hot tables; `k2 services status` asks the server's version.
    client = hot_tier.connect(settings, database="", write=True)
    hot_tier.create_hot_tables(client, settings.clickhouse.database)
    client.disconnect()
    assert all(s.healthy for s in services.status(settings))

    # The feed: a seeded day (with at-least-once redeliveries), offloaded to bronze and checked in full.
    seeded = feed.seed(settings, DAY, 3_000, seed=1, progress=False)
    assert sum(seeded[h.exchange].redelivered for h in HOT_TABLES.values()) > 0
    first = {name: bronze.build_bronze_day(settings, hot, DAY) for name, hot in HOT_TABLES.items()}
    for built in first.values():
        assert built.reconciliation.in_sync and not built.reconciliation.incremental, built.reconciliation

    # More rows on that day, a live feed with late trades into earlier days; the incremental offload.
    feed.seed(settings, DAY, 1_000, seed=2, progress=False)
    assert feed.live(settings, 200, 1.0, seed=3, progress=False, late_share=0.3).exchanges[0].late > 0
    for name, hot in HOT_TABLES.items():
        verified = reconcile.Verified(first[name].offload.watermark_after, first[name].reconciliation.actual)
        again = bronze.build_bronze_day(settings, hot, DAY, verified=verified)
        assert again.offload.rows > 0 and again.reconciliation.incremental and again.reconciliation.in_sync

    # Sensing (`k2 run`, the sensors), `k2 verify` over every hot day, the freshness sampler.
    pending = sensing.pending_days(settings, bronze={h.name for h in HOT_TABLES.values()}, silver_wanted=False, gold_wanted=False)
    assert DAY not in pending and pending  # the live feed's days are not offloaded
    checked = verify.verify(settings, layers=("bronze",))
    assert {r.day for r in checked.bronze} >= {DAY, *pending}
    iceberg.ensure_table(iceberg.catalog(settings), GOLD_TABLES["1m"])  # the sampler reads gold's watermark too
    freshness.measure(settings, BINANCE, 0.05, interval_s=0.05, drain_s=0.0)

    # `k2 live` start-up (history already there, first partition) and `k2 bench` (reset, merges, baseline).
    assert live.seed_history(settings, 1, 2, today=DAY + dt.timedelta(days=1), log=quiet) == []
    live.first_day(settings, 3)
    bench._reset_hot(settings)
    bench._wait_for_merges(bench.bench_settings(settings), timeout=0.1)
    assert bench._measure_baseline(settings, BINANCE.exchange, DAY)["rows"] > 0

    # Hot-tier retention (last: it empties the offloaded day): a delete mutation, waited for in system.mutations,
    # then checks that take the retired positions from the record.
    retired = retention.retire(settings, retention_days=1, today=DAY + dt.timedelta(days=2))
    gone = sorted(d.table for d in retired.days if d.day == DAY and d.retired)
    assert gone == sorted(h.name for h in HOT_TABLES.values()), retired.report()
    assert all(r.in_sync and r.retired for r in verify.verify(settings, days=[DAY], layers=("bronze",)).bronze)


def _assert_covers(calls: list[Call]) -> None:
    """The recording holds the statements that matter, so the replay cannot pass by having nothing to run."""
    sql = [c.sql for c in calls]

    def sent(*parts: str, method: str | None = None) -> bool:
        return any(all(p in c.sql for p in parts) and method in (None, c.method) for c in calls)

    for hot in HOT_TABLES.values():
        assert sent(f"CREATE TABLE IF NOT EXISTS {hot.name}") or sent(f".{hot.name} ("), hot.name
        assert any(c.kind == "INSERT" and c.data_rows and hot.name in c.sql for c in calls), f"feed insert {hot.name}"
        assert sent(f"FROM {hot.name}", "LIMIT 1 BY kafka_partition, kafka_offset", method="query_arrow_stream"), "range read"
        assert sent(f"FROM {hot.name}", "max(kafka_offset)", "trade_date = %(day)s"), "high offsets of a day"
        assert sent(f"FROM {hot.name}", "GROUP BY trade_date, kafka_partition"), "high offsets by day"
        assert sent(f"FROM {hot.name}", "sumIf(", "%(hip0)s"), "reconcile up to a watermark"
        assert sent(f"FROM {hot.name}", "sumIf(", "%(lop0)s"), "reconcile of an increment"
        assert sent(f"SELECT count() FROM {hot.name} WHERE trade_date = %(day)s"), "hot rows of a day"
        assert sent(f"FROM {hot.name} GROUP BY kafka_partition"), "feed state"
    assert sent("FROM system.columns", "%(table)s"), "the hot table's columns (schema drift)"
    for hot in HOT_TABLES.values():
        assert sent(f"ALTER TABLE {hot.name} DELETE WHERE trade_date = %(day)s", "%(wp0)s"), "retention's delete"
    assert sent("FROM system.mutations", "is_done = 0"), "retention waits for its mutation"
    assert sent("CREATE DATABASE IF NOT EXISTS") and sent("DROP DATABASE IF EXISTS")
    assert len(calls) >= 30 and len(set(sql)) >= 20, f"only {len(calls)} statements recorded"


def _same_rows(expected: list[tuple], got: list[tuple]) -> bool:
    return Counter(expected) == Counter(got)


def test_every_statement_runs_on_current_clickhouse(lake: Lake, monkeypatch: pytest.MonkeyPatch, chdb_session) -> None:
    recorder = Recorder()
    real_connect = recorder.install(monkeypatch)
    _drive_the_product(lake)
    assert recorder.built == recorder.clients > 0, "a ClickHouse client was built outside hot_tier.connect"
    assert not recorder.unrecorded, f"client methods called that the recorder does not record: {recorder.unrecorded}"
    calls = recorder.distinct()
    _assert_covers(calls)

    refs: dict[str, object] = {}  # plain 18.16 clients per database, for the reference answers

    def ref(database: str):
        if database not in refs:
            refs[database] = real_connect(lake.settings, database=database)
            refs[database].execute("SELECT 1")  # connected: substitution escapes times in the server's zone
        return refs[database]

    replay = ChdbReplay(chdb_session)
    failures: list[str] = []
    compared = 0

    def attempt(call: Call, sql: str, fmt: str = "CSV"):
        try:
            return replay.run(call, sql, fmt)
        except Exception as exc:  # noqa: BLE001 - chDB raises its own error type for server errors
            failures.append(f"{call.method}: {sql[:2000]}\n  -> {type(exc).__name__}: {str(exc)[:600]}")
            return None

    by_kind: dict[str, list[Call]] = defaultdict(list)
    for call in calls:
        by_kind["SELECT" if call.kind == "SELECT" else "INSERT" if call.kind == "INSERT" else "OTHER"].append(call)

    # 1. DDL and the rest, in the order first sent (DROP before CREATE, databases before tables).
    for call in by_kind["OTHER"]:
        assert call.data_rows is None, call
        attempt(call, call.substituted(ref(call.database)))

    # 2. INSERTs, each with real rows: the hot tables' final content, so both servers hold the same data.
    #    Several INSERT texts into one table share its rows between them.
    inserts: dict[str, list[Call]] = defaultdict(list)
    for call in by_kind["INSERT"]:
        assert call.data_rows is not None, f"an INSERT without data (inline VALUES hang on 18.16): {call.sql}"
        inserts[insert_target(call)[0]].append(call)
    for table, group in inserts.items():
        for i, call in enumerate(group):
            _, columns = insert_target(call)
            client = ref(call.database)
            rows = client.execute(f"SELECT {', '.join(columns)} FROM {table}", settings={"use_numpy": False})[i :: len(group)]
            assert rows, f"no rows for {call.sql}"
            attempt(call, f"{call.sql} {render_values(rows, client.connection.context)}")
        (n,), = replay.query_rows(f"SELECT count() FROM {table}")
        (m,), = ref("").execute(f"SELECT count() FROM {table}", settings={"use_numpy": False})
        assert n == m, f"{table}: {n} rows in chDB, {m} in 18.16"

    # 3. SELECTs: they run, and give the same rows as 18.16 over the same data.
    for call in by_kind["SELECT"]:
        client = ref(call.database)
        sql = call.substituted(client)
        result = attempt(call, sql, "ArrowTable")
        if result is None or any(s in sql for s in _SERVER_SPECIFIC):
            continue
        rows, types = client.execute(
            sql, with_column_types=True, settings={**dict(call.settings), "use_numpy": False}
        )
        names = [n for n, _ in types]
        assert len(names) == len(result.column_names), (names, result.column_names)
        keep = [i for i, n in enumerate(names) if not ("LIMIT 1 BY" in sql and n in _PER_COPY_COLUMNS)]
        expected = [tuple(normalize(r[i]) for i in keep) for r in rows]
        got = [tuple(normalize(r[i]) for i in keep) for r in arrow_rows(result)]
        if not _same_rows(expected, got):
            failures.append(
                f"{call.method}: {sql[:2000]}\n  -> different rows: 18.16 {sorted(expected, key=repr)[:5]}... "
                f"({len(expected)}), chDB {sorted(got, key=repr)[:5]}... ({len(got)})"
            )
        compared += 1

    for client in refs.values():
        client.disconnect()
    assert not failures, f"{len(failures)} of {len(calls)} statements fail on current ClickHouse:\n" + "\n".join(failures)
    assert compared >= 15, f"only {compared} SELECT results compared"
    print(f"\n{len(calls)} distinct statements replayed on ClickHouse "
          f"{replay.query_rows('SELECT version()')[0][0]}: {len(by_kind['OTHER'])} DDL, {len(by_kind['INSERT'])} INSERT, "
          f"{len(by_kind['SELECT'])} SELECT ({compared} compared with 18.16)")
