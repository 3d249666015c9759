-- Every bronze row of day D, both exchanges, in one shape, with the first reason it is invalid (NULL: valid)
-- and its delivery: 1 for the first feed position of a valid trade identity, 2.. for later ones (replays).
-- Inputs: bronze_trades_binance, bronze_trades_kraken (the day's bronze partitions), symbol_map, partition_day
-- (the day's bounds and the plausibility limits of contracts.py).
-- DuckDB dialect, kept to what sqlglot transpiles for Spark: no time_bucket, explicit column lists; and to what
-- both engines evaluate alike on hostile text: no `$` right after a pattern that a line break could follow
-- (Java's `$` also matches before a final line break, RE2's does not), no cast that one engine stretches
-- (DuckDB casts '1e5' and '0x10' to integers, Spark does not).
WITH raw AS (
    SELECT
        'binance' AS exchange, kafka_partition, kafka_offset, trade_date, kafka_timestamp,
        event_type = 'trade' AS well_formed,
        length(event_type) + length(symbol) + length(price) + length(quantity) AS text_chars,
        -- the offload escaped a value that is not UTF-8 (contracts.UNDECODABLE_PREFIX)
        event_type LIKE '�k2:hex:%' OR symbol LIKE '�k2:hex:%' OR price LIKE '�k2:hex:%'
            OR quantity LIKE '�k2:hex:%' AS undecodable,
        symbol AS raw_symbol, trade_id, CAST(trade_id AS VARCHAR) AS raw_trade_id,
        price AS raw_price, quantity AS raw_quantity,
        CAST(trade_time AS VARCHAR) AS raw_time,
        -- epoch ms; past the year 292,000 the µs would overflow a BIGINT: unreadable
        CASE WHEN trade_time <= 9223372036854775 THEN CAST(trade_time AS BIGINT) * 1000 END AS time_us,
        CAST(is_buyer_maker AS VARCHAR) AS raw_side,
        CASE WHEN is_buyer_maker THEN 'sell' ELSE 'buy' END AS side  -- the maker bought: the aggressor sold
    FROM bronze_trades_binance
    UNION ALL
    SELECT
        'kraken' AS exchange, kafka_partition, kafka_offset, trade_date, kafka_timestamp,
        side IN ('b', 's') AS well_formed,
        length(pair) + length(price) + length(volume) + length(time) + length(side) + length(order_type)
            + length(misc) AS text_chars,
        pair LIKE '�k2:hex:%' OR price LIKE '�k2:hex:%' OR volume LIKE '�k2:hex:%' OR time LIKE '�k2:hex:%'
            OR side LIKE '�k2:hex:%' OR order_type LIKE '�k2:hex:%' OR misc LIKE '�k2:hex:%' AS undecodable,
        pair AS raw_symbol, trade_id, CAST(trade_id AS VARCHAR) AS raw_trade_id,
        price AS raw_price, volume AS raw_quantity,
        time AS raw_time,
        -- Kraken sends 'seconds.micros' with exactly six decimals: drop the dot and it is epoch µs, exact.
        -- Digits and that one dot only (translate keeps what is not a digit), at most 18 digits (a BIGINT).
        -- (A regular expression or a wide-decimal parse costs ~1 µs per distinct string: every time is distinct.)
        CASE WHEN strpos(time, '.') = length(time) - 6 AND length(time) <= 19 AND translate(time, '0123456789', '') = '.'
            THEN TRY_CAST(replace(time, '.', '') AS BIGINT) END AS time_us,
        side AS raw_side,
        CASE side WHEN 'b' THEN 'buy' WHEN 's' THEN 'sell' END AS side
    FROM bronze_trades_kraken
),
typed AS (
    SELECT
        raw.exchange, raw.kafka_partition, raw.kafka_offset, raw.trade_date, raw.kafka_timestamp, raw.well_formed,
        raw.text_chars, raw.undecodable,
        raw.raw_symbol, raw.trade_id, raw.raw_trade_id, raw.raw_price, raw.raw_quantity, raw.raw_time,
        raw.time_us, raw.raw_side, raw.side, symbol_map.symbol,
        -- a plain decimal that ends in a digit (see the top: never a line break after `$`) ...
        regexp_matches(raw.raw_price, '^-?[0-9]+([.][0-9]+)?$') AND right(raw.raw_price, 1) BETWEEN '0' AND '9'
            AS price_numeric,
        regexp_matches(raw.raw_quantity, '^-?[0-9]+([.][0-9]+)?$') AND right(raw.raw_quantity, 1) BETWEEN '0' AND '9'
            AS quantity_numeric,
        -- ... of at most 10 integer digits and 8 decimals: DECIMAL(18,8) holds the value exactly, never rounded
        CASE WHEN regexp_matches(raw.raw_price, '^-?[0-9]{1,10}([.][0-9]{1,8})?$') AND right(raw.raw_price, 1) BETWEEN '0' AND '9'
            THEN TRY_CAST(raw.raw_price AS DECIMAL(18, 8)) END AS price,
        CASE WHEN regexp_matches(raw.raw_quantity, '^-?[0-9]{1,10}([.][0-9]{1,8})?$') AND right(raw.raw_quantity, 1) BETWEEN '0' AND '9'
            THEN TRY_CAST(raw.raw_quantity AS DECIMAL(18, 8)) END AS quantity,
        -- the record timestamp in µs (a broker's clock: capped only so that hostile values cannot overflow)
        LEAST(raw.kafka_timestamp, 9000000000000000) * 1000 AS record_us,
        partition_day.start_us, partition_day.end_us, partition_day.late_us, partition_day.ahead_us,
        partition_day.max_text
    FROM raw
    CROSS JOIN partition_day
    LEFT JOIN symbol_map ON symbol_map.exchange = raw.exchange AND symbol_map.exchange_symbol = raw.raw_symbol
),
checked AS (
    SELECT
        exchange, kafka_partition, kafka_offset, trade_date, raw_symbol, trade_id, raw_trade_id, raw_price,
        raw_quantity, raw_time, raw_side, symbol, price, quantity, side, time_us,
        CASE
            WHEN text_chars > max_text THEN 'oversized_message'
            WHEN undecodable THEN 'invalid_utf8'
            WHEN NOT well_formed THEN 'malformed_message'
            WHEN symbol IS NULL THEN 'unknown_symbol'
            WHEN raw_time IS NULL OR raw_time = '' THEN 'missing_trade_time'
            WHEN time_us IS NULL THEN 'unparseable_trade_time'
            WHEN time_us < record_us - late_us OR time_us > record_us + ahead_us THEN 'implausible_trade_time'
            WHEN time_us < start_us OR time_us >= end_us THEN 'trade_time_outside_day'
            WHEN NOT price_numeric THEN 'non_numeric_price'
            WHEN price IS NULL THEN 'price_out_of_range'
            WHEN NOT quantity_numeric THEN 'non_numeric_quantity'
            WHEN quantity IS NULL THEN 'quantity_out_of_range'
            WHEN price <= 0 THEN 'non_positive_price'
            WHEN quantity <= 0 THEN 'non_positive_quantity'
        END AS invalid
    FROM typed
),
delivered AS (  -- valid rows in feed order per trade identity: the first delivery wins
    SELECT
        exchange, kafka_partition, kafka_offset, trade_date, raw_symbol, trade_id, raw_trade_id, raw_price,
        raw_quantity, raw_time, raw_side, symbol, price, quantity, side, time_us, invalid,
        row_number() OVER by_identity AS delivery,
        first_value(price) OVER by_identity AS first_price,
        first_value(quantity) OVER by_identity AS first_quantity,
        first_value(side) OVER by_identity AS first_side,
        first_value(time_us) OVER by_identity AS first_time_us
    FROM checked
    WHERE invalid IS NULL
    WINDOW by_identity AS (PARTITION BY exchange, symbol, trade_id ORDER BY kafka_partition, kafka_offset)
)
SELECT
    exchange, kafka_partition, kafka_offset, trade_date, raw_symbol, trade_id, raw_trade_id, raw_price,
    raw_quantity, raw_time, raw_side, symbol, price, quantity, side, time_us,
    -- a later delivery of the same trade is a replay (dropped by silver_trades) when it carries the same trade,
    -- and rejected when it does not: the first delivery's values stay, the conflict is kept for a human
    CASE WHEN delivery > 1 AND (price <> first_price OR quantity <> first_quantity OR side <> first_side
        OR time_us <> first_time_us) THEN 'conflicting_duplicate' END AS reason,
    delivery
FROM delivered
UNION ALL
SELECT
    exchange, kafka_partition, kafka_offset, trade_date, raw_symbol, trade_id, raw_trade_id, raw_price,
    raw_quantity, raw_time, raw_side, symbol, price, quantity, side, time_us, invalid AS reason,
    CAST(NULL AS BIGINT) AS delivery
FROM checked
WHERE invalid IS NOT NULL
