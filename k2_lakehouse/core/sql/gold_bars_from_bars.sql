-- OHLCV bars of a coarser interval (bar_interval: one row, the width in µs) from the bars of a finer one
-- that divides it (finer_bars): each coarse window is the union of its fine windows, so its open and
-- close are those of its first and last fine bar.
SELECT
    exchange, symbol, coarse_start AS window_start, open, high, low, close, volume, quote_volume, trade_count
FROM (
    SELECT
        exchange, symbol,
        make_timestamp(epoch_us(window_start) // bar_interval.micros * bar_interval.micros) AS coarse_start,
        min_by(open, window_start) AS open,
        max(high) AS high,
        min(low) AS low,
        max_by(close, window_start) AS close,
        CAST(sum(volume) AS DECIMAL(38, 8)) AS volume,
        CAST(sum(quote_volume) AS DECIMAL(38, 16)) AS quote_volume,
        CAST(sum(trade_count) AS BIGINT) AS trade_count
    FROM finer_bars
    CROSS JOIN bar_interval
    GROUP BY exchange, symbol, coarse_start
) AS coarse
ORDER BY exchange, symbol, window_start
