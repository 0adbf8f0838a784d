-- Every row of the month in the cleaned schema, with what the caller needs to tally and filter it:
-- _tally = reason code × 4 + service code × 2 + passenger count imputed (reason code 0 = kept; the caller formats
-- {reasons}, the rejection reasons in code order from 1, and {service_code}, a CASE giving each service its code),
-- whether it is a duplicate candidate (then also _rest, a hash of all its {source_columns}, for the exact
-- comparison in cleaned_duplicates.sql), and its row number.
-- Narrowing casts are TRY_CASTs: exact for kept rows (cleaned_trips.sql checked their range and integrality);
-- a rejected row's cleaned columns are never written, so whatever they become cannot fail the month.
SELECT
    service, pickup_datetime, dropoff_datetime,
    TRY_CAST(pickup_zone AS INTEGER) AS pickup_zone,
    TRY_CAST(dropoff_zone AS INTEGER) AS dropoff_zone,
    TRY_CAST(coalesce(passenger_count, 1) AS TINYINT) AS passenger_count,
    trip_distance,
    date_diff('microsecond', pickup_datetime, CASE WHEN reject_reason IS NULL THEN dropoff_datetime END)
        / 60e6 AS trip_duration_min,
    fare_amount, total_amount,
    TRY_CAST(vendor_id AS INTEGER) AS vendor_id,
    TRY_CAST(ratecode_id AS INTEGER) AS ratecode_id,
    TRY_CAST(payment_type AS INTEGER) AS payment_type,
    tip_amount, tolls_amount, congestion_surcharge, airport_fee, cbd_congestion_fee,
    _row,
    reject_reason,
    (CASE WHEN reject_reason IS NULL THEN 0 ELSE list_position({reasons}, reject_reason) END) * 4
        + {service_code} * 2
        + (reject_reason IS NULL AND passenger_count IS NULL)::INTEGER AS _tally,
    _candidate,
    CASE WHEN _candidate THEN hash({source_columns}) END AS _rest
FROM (SELECT *, _key IN (SELECT _key FROM dup_keys) AS _candidate FROM classified)
