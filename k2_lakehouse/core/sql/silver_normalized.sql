-- Every bronze row of day D, both exchanges, in one shape, with the first reason it is invalid (NULL: valid).
-- Inputs: bronze_trades_binance, bronze_trades_kraken (the day's bronze partitions), symbol_map, partition_day.
-- DuckDB dialect, kept to what sqlglot transpiles for Spark: no time_bucket, explicit column lists.
WITH raw AS (
    SELECT
        'binance' AS exchange, kafka_partition, kafka_offset, trade_date,
        event_type = 'trade' AS well_formed,
        symbol AS raw_symbol, trade_id, CAST(trade_id AS VARCHAR) AS raw_trade_id,
        price AS raw_price, quantity AS raw_quantity,
        CAST(trade_time AS VARCHAR) AS raw_time,
        CAST(trade_time AS BIGINT) * 1000 AS time_us,  -- epoch ms
        CAST(is_buyer_maker AS VARCHAR) AS raw_side,
        CASE WHEN is_buyer_maker THEN 'sell' ELSE 'buy' END AS side  -- the maker bought: the aggressor sold
    FROM bronze_trades_binance
    UNION ALL
    SELECT
        'kraken' AS exchange, kafka_partition, kafka_offset, trade_date,
        side IN ('b', 's') AS well_formed,
        pair AS raw_symbol, trade_id, CAST(trade_id AS VARCHAR) AS raw_trade_id,
        price AS raw_price, volume AS raw_quantity,
        time AS raw_time,
        -- Kraken sends 'seconds.micros' with exactly six decimals: drop the dot and it is epoch µs, exact.
        -- (A regular expression or a wide-decimal parse costs ~1 µs per distinct string: every time is distinct.)
        CASE WHEN strpos(time, '.') = length(time) - 6 AND strpos(time, '-') = 0 AND strpos(time, '+') = 0
            THEN TRY_CAST(replace(time, '.', '') AS BIGINT) END AS time_us,
        side AS raw_side,
        CASE side WHEN 'b' THEN 'buy' WHEN 's' THEN 'sell' END AS side
    FROM bronze_trades_kraken
),
typed AS (
    SELECT
        raw.exchange, raw.kafka_partition, raw.kafka_offset, raw.trade_date, raw.well_formed,
        raw.raw_symbol, raw.trade_id, raw.raw_trade_id, raw.raw_price, raw.raw_quantity, raw.raw_time,
        raw.time_us, raw.raw_side, raw.side, symbol_map.symbol,
        -- at most 10 integer digits and 8 decimals: DECIMAL(18,8) holds the value exactly, never rounded
        CASE WHEN regexp_matches(raw.raw_price, '^-?[0-9]{1,10}([.][0-9]{1,8})?$')
            THEN TRY_CAST(raw.raw_price AS DECIMAL(18, 8)) END AS price,
        CASE WHEN regexp_matches(raw.raw_quantity, '^-?[0-9]{1,10}([.][0-9]{1,8})?$')
            THEN TRY_CAST(raw.raw_quantity AS DECIMAL(18, 8)) END AS quantity,
        partition_day.start_us, partition_day.end_us
    FROM raw
    CROSS JOIN partition_day
    LEFT JOIN symbol_map ON symbol_map.exchange = raw.exchange AND symbol_map.exchange_symbol = raw.raw_symbol
)
SELECT
    exchange, kafka_partition, kafka_offset, trade_date, raw_symbol, trade_id, raw_trade_id, raw_price,
    raw_quantity, raw_time, raw_side, symbol, price, quantity, side, time_us,
    CASE
        WHEN NOT well_formed THEN 'malformed_message'
        WHEN symbol IS NULL THEN 'unknown_symbol'
        WHEN raw_time IS NULL OR raw_time = '' THEN 'missing_trade_time'
        WHEN time_us IS NULL THEN 'unparseable_trade_time'
        WHEN time_us < start_us OR time_us >= end_us THEN 'trade_time_outside_day'
        WHEN price IS NULL THEN 'non_numeric_price'
        WHEN quantity IS NULL THEN 'non_numeric_quantity'
        WHEN price <= 0 THEN 'non_positive_price'
        WHEN quantity <= 0 THEN 'non_positive_quantity'
    END AS reason
FROM typed
