-- Every bronze feed position of day D accounted for exactly once, per exchange:
-- bronze rows = silver rows + replays dropped + rejected rows, where a replay is a position in neither
-- table whose trade identity silver holds at an earlier position. Inputs: the day's bronze partitions
-- (bronze_trades_*), symbol_map, and the audited silver_trades / silver_trades_rejected.
-- With `missing` = bronze positions in neither table (one anti-join), silver and rejected together hold
-- each bronze position at most once and nothing else exactly when landed + missing = bronze, by count:
-- a duplicated or invented position would be counted on the left only.
-- A position is one BIGINT (exchange << 56 | partition << 40 | offset): joins over millions of rows stay cheap.
WITH bronze AS (
    SELECT 'binance' AS exchange, kafka_partition * 1099511627776 + kafka_offset AS pos,
        symbol AS raw_symbol, trade_id
    FROM bronze_trades_binance
    UNION ALL
    SELECT 'kraken' AS exchange, 72057594037927936 + kafka_partition * 1099511627776 + kafka_offset AS pos,
        pair AS raw_symbol, trade_id
    FROM bronze_trades_kraken
),
landed AS (
    SELECT exchange, 'silver' AS layer, CASE exchange WHEN 'kraken' THEN 72057594037927936 ELSE 0 END
        + kafka_partition * 1099511627776 + kafka_offset AS pos
    FROM silver_trades
    UNION ALL
    SELECT exchange, 'rejected' AS layer, CASE exchange WHEN 'kraken' THEN 72057594037927936 ELSE 0 END
        + kafka_partition * 1099511627776 + kafka_offset AS pos
    FROM silver_trades_rejected
),
missing AS (  -- bronze positions in neither table: replays, or losses
    SELECT bronze.exchange, bronze.pos, symbol_map.symbol, bronze.trade_id
    FROM bronze
    LEFT JOIN symbol_map ON symbol_map.exchange = bronze.exchange AND symbol_map.exchange_symbol = bronze.raw_symbol
    -- NOT EXISTS, not NOT IN: both engines plan an anti join (Spark plans NOT IN as a broadcast, which
    -- does not fit in memory at millions of positions)
    WHERE NOT EXISTS (SELECT 1 FROM landed WHERE landed.pos = bronze.pos)
),
replays AS (
    SELECT missing.exchange, count(*) AS n
    FROM missing
    WHERE EXISTS (
        SELECT 1 FROM silver_trades AS kept
        WHERE kept.exchange = missing.exchange AND kept.symbol = missing.symbol AND kept.trade_id = missing.trade_id
            AND kept.kafka_partition * 1099511627776 + kept.kafka_offset < missing.pos % 72057594037927936
    )
    GROUP BY missing.exchange
),
counts AS (
    SELECT exchange, 'bronze' AS what, count(*) AS n FROM bronze GROUP BY exchange
    UNION ALL SELECT exchange, layer AS what, count(*) AS n FROM landed GROUP BY exchange, layer
    UNION ALL SELECT exchange, 'missing' AS what, count(*) AS n FROM missing GROUP BY exchange
    UNION ALL SELECT exchange, 'replays' AS what, n FROM replays
),
per_exchange AS (
    SELECT
        exchanges.exchange,
        coalesce(sum(CASE WHEN what = 'bronze' THEN n END), 0) AS bronze_rows,
        coalesce(sum(CASE WHEN what = 'silver' THEN n END), 0) AS silver_rows,
        coalesce(sum(CASE WHEN what = 'rejected' THEN n END), 0) AS rejected_rows,
        coalesce(sum(CASE WHEN what = 'missing' THEN n END), 0) AS missing,
        coalesce(sum(CASE WHEN what = 'replays' THEN n END), 0) AS replays_dropped
    FROM (SELECT 'binance' AS exchange UNION ALL SELECT 'kraken' AS exchange) AS exchanges
    LEFT JOIN counts ON counts.exchange = exchanges.exchange
    GROUP BY exchanges.exchange
)
SELECT
    exchange, bronze_rows, silver_rows, rejected_rows, replays_dropped,
    missing - replays_dropped AS unaccounted,  -- lost: in bronze, in neither table, not a replay
    silver_rows + rejected_rows + missing - bronze_rows AS extra_positions  -- duplicated or not in bronze
FROM per_exchange
ORDER BY exchange
