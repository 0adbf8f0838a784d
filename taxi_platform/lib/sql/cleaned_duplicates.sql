-- Exact duplicates among the candidates: equal in every cleaned column and in every other source column
-- (compared through a fingerprint of those, fetched for the candidates' rows only). The first copy by file row
-- number is the original (_copy = 1); later copies are dropped.
WITH rest AS (
    SELECT service, _row, hash({other_columns}) AS _rest
    FROM unified
    WHERE (service, _row) IN (SELECT (service, _row) FROM candidates)
)
SELECT c.*, row_number() OVER (PARTITION BY r._rest, {cleaned_columns} ORDER BY c._row) AS _copy
FROM candidates c JOIN rest r USING (service, _row)
