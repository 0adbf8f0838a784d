-- The month's rows in the cleaned schema: every kept row, plus every duplicate candidate (kept or not) with
-- what the exact comparison needs: a fingerprint of all source columns (only for candidates) and its reason.
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
    reject_reason IS NULL AND passenger_count IS NULL AS _imputed,
    _candidate,
    CASE WHEN _candidate THEN hash({source_columns}) END AS _source_hash
FROM (SELECT *, _key IN (SELECT _key FROM dup_keys) AS _candidate FROM classified)
WHERE reject_reason IS NULL OR _candidate
