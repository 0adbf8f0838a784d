-- Every row of the month in the cleaned schema, with what the caller needs to tally and filter it:
-- _tally = reason code × 4 + service code × 2 + passenger count imputed (reason code 0 = kept; the caller formats
-- {reasons}, the rejection reasons in code order from 1, and {service_code}, a CASE giving each service its code),
-- whether it is a duplicate candidate, and its row number.
SELECT
    service, pickup_datetime, dropoff_datetime,
    pickup_zone, dropoff_zone,
    CAST(coalesce(passenger_count, 1) AS TINYINT) AS passenger_count,
    trip_distance,
    date_diff('second', pickup_datetime, dropoff_datetime) / 60.0 AS trip_duration_min,
    fare_amount, total_amount, vendor_id, ratecode_id, payment_type, tip_amount,
    tolls_amount, congestion_surcharge, airport_fee, cbd_congestion_fee,
    _row,
    reject_reason,
    (CASE WHEN reject_reason IS NULL THEN 0 ELSE list_position({reasons}, reject_reason) END) * 4
        + {service_code} * 2
        + (reject_reason IS NULL AND passenger_count IS NULL)::INTEGER AS _tally,
    _key IN (SELECT _key FROM dup_keys) AS _candidate
FROM classified
