-- OHLCV bars of the finest interval from silver trades of day D (bar_interval: one row, the width in µs).
-- Open and close are the first and last trade by (trade_ts, trade_id): deterministic under equal times.
-- Buckets by epoch arithmetic (portable; DuckDB's time_bucket has no Spark equivalent). VWAP is added
-- afterwards from the exact sums (`gold.with_vwap`): neither engine divides decimals exactly.
SELECT
    exchange, symbol,
    CAST(make_timestamp(date_diff('microsecond', TIMESTAMPTZ '1970-01-01 00:00:00+00', trade_ts)
        // bar_interval.micros * bar_interval.micros) AS TIMESTAMPTZ) AS window_start,
    min_by(price, struct_pack(t := trade_ts, i := trade_id)) AS open,
    max(price) AS high,
    min(price) AS low,
    max_by(price, struct_pack(t := trade_ts, i := trade_id)) AS close,
    CAST(sum(quantity) AS DECIMAL(38, 8)) AS volume,
    CAST(sum(quote_volume) AS DECIMAL(38, 16)) AS quote_volume,
    count(*) AS trade_count
FROM silver_trades
CROSS JOIN bar_interval
GROUP BY exchange, symbol, window_start
ORDER BY exchange, symbol, window_start
