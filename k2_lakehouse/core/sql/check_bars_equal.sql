-- The bars of a table (actual_bars) against the same bars recomputed from a finer table (expected_bars):
-- every window present in both, every value equal.
SELECT
    count(*) AS windows,
    coalesce(sum(CASE WHEN a.exchange IS NULL OR e.exchange IS NULL
        OR a.open IS DISTINCT FROM e.open OR a.high IS DISTINCT FROM e.high OR a.low IS DISTINCT FROM e.low
        OR a.close IS DISTINCT FROM e.close OR a.volume IS DISTINCT FROM e.volume
        OR a.quote_volume IS DISTINCT FROM e.quote_volume OR a.vwap IS DISTINCT FROM e.vwap
        OR a.trade_count IS DISTINCT FROM e.trade_count THEN 1 ELSE 0 END), 0) AS mismatched_windows,
    count(a.exchange) AS actual_windows,
    count(e.exchange) AS expected_windows
FROM actual_bars AS a
FULL OUTER JOIN expected_bars AS e
    ON a.exchange = e.exchange AND a.symbol = e.symbol AND a.window_start = e.window_start
