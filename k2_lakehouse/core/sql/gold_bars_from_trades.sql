-- OHLCV bars of the finest interval from silver trades of day D (bar_interval: one row, the width in µs).
-- Open and close are the first and last trade by (trade_ts, trade_id): deterministic under equal times.
-- Buckets by epoch arithmetic (DuckDB's time_bucket has no Spark equivalent; epoch_us is Spark's unix_micros,
-- see dialects.py; date_diff on zoned timestamps costs 20x more). VWAP is added
-- afterwards from the exact sums (`gold.with_vwap`): neither engine divides decimals exactly.
SELECT
    exchange, symbol,
    make_timestamp(epoch_us(trade_ts) // bar_interval.micros * bar_interval.micros) AS window_start,  -- UTC
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
