-- Classify every trip of one raw file ({source}: its unified SELECT): NULL reason = keep, otherwise the first
-- rule it breaks. Every number arrives as DOUBLE whatever its source type and is narrowed only for kept rows
-- (cleaned_rows.sql), once these rules have checked it: no value can fail a cast.
-- The caller (transform.classify_select) formats:
--   {month_start} / {month_end}: first instant of the month and of the next month;
--   {in_zone_lookup}: e.g. "BETWEEN 1 AND 265", a LocationID of the zone lookup; {known_zone}: the same without
--     the lookup's zones that have no borough (264 "Unknown", 265 "Outside of NYC"), e.g. "BETWEEN 1 AND 263";
--   {non_finite}: NaN/±inf in one of the kept numbers; {zone_fraction}, {passenger_count_fraction}: a
--     whole-number column holding a fraction; {passenger_count_invalid}, {ratecode_invalid}, {payment_invalid},
--     {vendor_invalid}: a value outside the column's codes or range.
-- Each of the last group is "false" where the file cannot hold such a value: an integer column has no NaN and
-- no fraction, and an integer column whose Parquet statistics lie inside the allowed range has nothing to check.
-- _key is a cheap 32-bit fingerprint of a few columns: exact duplicates share it, so rows whose _key is unique
-- (nearly all) cannot be duplicates and the exact comparison runs on the few others only (including the rows that
-- share a _key by chance).
SELECT
    *,
    CASE
        WHEN pickup_datetime IS NULL OR dropoff_datetime IS NULL THEN 'missing_timestamp'
        WHEN {non_finite} THEN 'non_finite_number'
        WHEN pickup_datetime < TIMESTAMP '{month_start}' OR pickup_datetime >= TIMESTAMP '{month_end}'
            THEN 'pickup_outside_month'
        WHEN dropoff_datetime <= pickup_datetime THEN 'dropoff_not_after_pickup'
        WHEN dropoff_datetime > pickup_datetime + INTERVAL 5 HOUR THEN 'duration_over_5h'
        WHEN trip_distance IS NULL OR trip_distance <= 0 THEN 'non_positive_distance'
        WHEN trip_distance > 200 THEN 'distance_over_200mi'
        WHEN fare_amount IS NULL OR fare_amount <= 0 THEN 'non_positive_fare'
        WHEN fare_amount > 1000 THEN 'fare_over_1000usd'
        WHEN trip_distance * 3600e6 > 90 * date_diff('microsecond', pickup_datetime, dropoff_datetime)
            THEN 'speed_over_90mph'
        WHEN pickup_zone IS NULL OR dropoff_zone IS NULL
            OR NOT (pickup_zone {known_zone} AND dropoff_zone {known_zone}) OR {zone_fraction} THEN
            CASE
                WHEN NOT (coalesce(pickup_zone {in_zone_lookup}, true) AND coalesce(dropoff_zone {in_zone_lookup}, true))
                    OR {zone_fraction} THEN 'zone_not_in_lookup'
                ELSE 'unknown_zone'
            END
        WHEN {passenger_count_invalid} THEN
            CASE
                WHEN passenger_count < 0 THEN 'negative_passenger_count'
                WHEN {passenger_count_fraction} THEN 'non_integer_passenger_count'
                ELSE 'passenger_count_over_9'
            END
        WHEN {ratecode_invalid} THEN 'unknown_rate_code'
        WHEN {payment_invalid} THEN 'unknown_payment_type'
        WHEN {vendor_invalid} THEN 'invalid_vendor_id'
        ELSE NULL
    END AS reject_reason,
    (hash(service, pickup_datetime, dropoff_datetime, pickup_zone, dropoff_zone, fare_amount) >> 32)::UINTEGER AS _key
FROM {source}
