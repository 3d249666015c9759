-- silver.trades_rejected for day D: every bronze row that failed validation, its reason and raw values.
SELECT
    exchange, kafka_partition, kafka_offset, trade_date, reason,
    raw_symbol, raw_trade_id, raw_price, raw_quantity, raw_time, raw_side
FROM silver_normalized
WHERE reason IS NOT NULL
