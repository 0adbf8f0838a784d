-- Classify every unified trip of one month: NULL reason = keep, otherwise the first rule it breaks.
-- The caller formats {month_start} / {month_end} (first instant of the month and of the next month).
-- _key is a cheap fingerprint of a few columns: exact duplicates share it, so rows whose _key is unique
-- (nearly all) cannot be duplicates and the exact comparison runs on the few others only.
CREATE OR REPLACE TEMP VIEW classified AS
SELECT
    *,
    CASE
        WHEN pickup_datetime IS NULL OR dropoff_datetime IS NULL THEN 'missing_timestamp'
        WHEN pickup_datetime < TIMESTAMP '{month_start}' OR pickup_datetime >= TIMESTAMP '{month_end}'
            THEN 'pickup_outside_month'
        WHEN dropoff_datetime <= pickup_datetime THEN 'dropoff_not_after_pickup'
        WHEN date_diff('second', pickup_datetime, dropoff_datetime) > 5 * 3600 THEN 'duration_over_5h'
        WHEN trip_distance IS NULL OR trip_distance <= 0 THEN 'non_positive_distance'
        WHEN trip_distance > 200 THEN 'distance_over_200mi'
        WHEN fare_amount IS NULL OR fare_amount <= 0 THEN 'non_positive_fare'
        WHEN fare_amount > 1000 THEN 'fare_over_1000usd'
        WHEN trip_distance / (date_diff('second', pickup_datetime, dropoff_datetime) / 3600.0) > 90
            THEN 'speed_over_90mph'
        WHEN pickup_zone IS NULL OR dropoff_zone IS NULL
            OR pickup_zone NOT BETWEEN 1 AND 263 OR dropoff_zone NOT BETWEEN 1 AND 263 THEN 'unknown_zone'
        WHEN passenger_count > 9 THEN 'passenger_count_over_9'
        ELSE NULL
    END AS reject_reason,
    hash(service, pickup_datetime, dropoff_datetime, pickup_zone, dropoff_zone, fare_amount) AS _key
FROM unified
