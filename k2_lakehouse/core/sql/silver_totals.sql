-- Per exchange and symbol, what the silver trades of day D add up to: what every gold table must add up to.
SELECT
    exchange, symbol, count(*) AS trades, CAST(sum(quantity) AS DECIMAL(38, 8)) AS volume,
    CAST(sum(quote_volume) AS DECIMAL(38, 16)) AS quote_volume
FROM silver_trades
GROUP BY exchange, symbol
