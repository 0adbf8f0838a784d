-- One scan over the classified month: rows per (reason, service, passenger count imputed) and, in the same
-- pass, every _key that occurs more than once (the duplicate candidates).
SELECT
    GROUPING(_key) = 0 AS is_key,
    reject_reason,
    service,
    imputed,
    _key,
    count(*)::BIGINT AS rows
FROM (
    SELECT reject_reason, service, reject_reason IS NULL AND passenger_count IS NULL AS imputed, _key
    FROM classified
)
GROUP BY GROUPING SETS ((reject_reason, service, imputed), (_key))
HAVING GROUPING(_key) = 1 OR count(*) > 1
