-- silver.trades for day D: the valid rows, one per trade identity (exchange, symbol, trade_id);
-- an exchange replay (same identity and trade, later feed position) is dropped, the earliest position kept
-- (a later position with the same identity but another trade is rejected: silver_normalized.sql).
SELECT
    exchange, symbol, raw_symbol AS exchange_symbol, trade_id, price, quantity,
    -- DECIMAL(18,8) x DECIMAL(19,8): every digit kept by DuckDB (37,16) and by Spark (38,16)
    CAST(price * CAST(quantity AS DECIMAL(19, 8)) AS DECIMAL(38, 16)) AS quote_volume,
    side,
    make_timestamp(time_us) AS trade_ts,  -- UTC; the contract gives it its zone when written
    kafka_partition, kafka_offset
FROM silver_normalized
WHERE reason IS NULL AND delivery = 1  -- no ORDER BY: the writer sorts each row group by the contract's sort columns
