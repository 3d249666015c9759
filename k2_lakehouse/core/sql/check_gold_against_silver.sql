-- Gold bars against silver trades, per exchange and symbol: trade counts, volumes and quote volumes
-- must be equal. Inputs: silver_totals (silver_totals.sql over the silver day the bars came from), gold_bars.
WITH gold AS (
    SELECT exchange, symbol, CAST(sum(trade_count) AS BIGINT) AS trades, CAST(sum(volume) AS DECIMAL(38, 8)) AS volume,
        CAST(sum(quote_volume) AS DECIMAL(38, 16)) AS quote_volume
    FROM gold_bars
    GROUP BY exchange, symbol
)
SELECT
    count(*) AS groups,
    coalesce(sum(CASE WHEN silver.trades IS DISTINCT FROM gold.trades OR silver.volume IS DISTINCT FROM gold.volume
        OR silver.quote_volume IS DISTINCT FROM gold.quote_volume THEN 1 ELSE 0 END), 0) AS mismatched_groups,
    coalesce(sum(silver.trades), 0) AS silver_trades,
    coalesce(sum(gold.trades), 0) AS gold_trades,
    CAST(coalesce(sum(silver.volume), 0) AS VARCHAR) AS silver_volume,
    CAST(coalesce(sum(gold.volume), 0) AS VARCHAR) AS gold_volume
FROM silver_totals AS silver
FULL OUTER JOIN gold ON gold.exchange = silver.exchange AND gold.symbol = silver.symbol
