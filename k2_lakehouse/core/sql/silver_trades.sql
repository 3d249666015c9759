-- silver.trades for day D: the valid rows, one per trade identity (exchange, symbol, trade_id);
-- an exchange replay (same identity, later feed position) is dropped, the earliest position kept.
SELECT
    exchange, symbol, raw_symbol AS exchange_symbol, trade_id, price, quantity,
    -- DECIMAL(18,8) x DECIMAL(19,8): every digit kept by DuckDB (37,16) and by Spark (38,16)
    CAST(price * CAST(quantity AS DECIMAL(19, 8)) AS DECIMAL(38, 16)) AS quote_volume,
    side,
    make_timestamp(time_us) AS trade_ts,  -- UTC; the contract gives it its zone when written
    kafka_partition, kafka_offset
FROM (
    SELECT
        exchange, symbol, raw_symbol, trade_id, price, quantity, side, time_us, kafka_partition, kafka_offset,
        row_number() OVER (PARTITION BY exchange, symbol, trade_id ORDER BY kafka_partition, kafka_offset) AS delivery
    FROM silver_normalized
    WHERE reason IS NULL
) AS valid
WHERE delivery = 1  -- no ORDER BY: the writer sorts each row group by the contract's sort columns
