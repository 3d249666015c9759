-- Every bronze feed position of day D accounted for exactly once, per exchange:
-- bronze rows = silver rows + replays dropped + rejected rows, where a replay is a position in neither
-- table whose trade identity silver holds at an earlier position. Inputs: the day's bronze partitions
-- (bronze_trades_*), symbol_map, and the audited silver_trades / silver_trades_rejected.
WITH bronze AS (
    SELECT 'binance' AS exchange, kafka_partition, kafka_offset, symbol AS raw_symbol, trade_id
    FROM bronze_trades_binance
    UNION ALL
    SELECT 'kraken' AS exchange, kafka_partition, kafka_offset, pair AS raw_symbol, trade_id
    FROM bronze_trades_kraken
),
landed AS (
    SELECT exchange, kafka_partition, kafka_offset, count(*) AS copies
    FROM (
        SELECT exchange, kafka_partition, kafka_offset FROM silver_trades
        UNION ALL
        SELECT exchange, kafka_partition, kafka_offset FROM silver_trades_rejected
    ) AS both_tables
    GROUP BY exchange, kafka_partition, kafka_offset
),
kept AS (  -- the position silver kept for each trade identity
    SELECT exchange, symbol, trade_id, min(kafka_partition) AS kafka_partition, min(kafka_offset) AS kafka_offset
    FROM silver_trades
    GROUP BY exchange, symbol, trade_id
),
positions AS (
    SELECT
        bronze.exchange,
        landed.copies,
        landed.copies IS NULL AND kept.trade_id IS NOT NULL AND (
            kept.kafka_partition < bronze.kafka_partition
            OR (kept.kafka_partition = bronze.kafka_partition AND kept.kafka_offset < bronze.kafka_offset)
        ) AS is_replay
    FROM bronze
    LEFT JOIN landed
        ON landed.exchange = bronze.exchange AND landed.kafka_partition = bronze.kafka_partition
        AND landed.kafka_offset = bronze.kafka_offset
    LEFT JOIN symbol_map ON symbol_map.exchange = bronze.exchange AND symbol_map.exchange_symbol = bronze.raw_symbol
    LEFT JOIN kept
        ON kept.exchange = bronze.exchange AND kept.symbol = symbol_map.symbol AND kept.trade_id = bronze.trade_id
),
per_exchange AS (
    SELECT
        exchange,
        count(*) AS bronze_rows,
        sum(CASE WHEN is_replay THEN 1 ELSE 0 END) AS replays_dropped,
        sum(CASE WHEN copies IS NULL AND NOT is_replay THEN 1 ELSE 0 END) AS unaccounted,
        sum(CASE WHEN copies > 1 THEN 1 ELSE 0 END) AS counted_twice
    FROM positions
    GROUP BY exchange
),
exchanges AS (
    SELECT 'binance' AS exchange UNION ALL SELECT 'kraken' AS exchange
)
SELECT
    exchanges.exchange,
    coalesce(per_exchange.bronze_rows, 0) AS bronze_rows,
    (SELECT count(*) FROM silver_trades WHERE silver_trades.exchange = exchanges.exchange) AS silver_rows,
    (SELECT count(*) FROM silver_trades_rejected WHERE silver_trades_rejected.exchange = exchanges.exchange) AS rejected_rows,
    coalesce(per_exchange.replays_dropped, 0) AS replays_dropped,
    coalesce(per_exchange.unaccounted, 0) AS unaccounted,
    coalesce(per_exchange.counted_twice, 0) AS counted_twice,
    (SELECT count(*) FROM landed
        LEFT JOIN bronze ON bronze.exchange = landed.exchange AND bronze.kafka_partition = landed.kafka_partition
        AND bronze.kafka_offset = landed.kafka_offset
        WHERE landed.exchange = exchanges.exchange AND bronze.exchange IS NULL) AS not_in_bronze
FROM exchanges
LEFT JOIN per_exchange ON per_exchange.exchange = exchanges.exchange
ORDER BY exchanges.exchange
