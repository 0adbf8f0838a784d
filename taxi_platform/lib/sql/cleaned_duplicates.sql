-- Exact duplicates among the candidates: equal in every source column (the fingerprint) and every cleaned
-- column. The first copy by file row number is the original (_copy = 1); later copies are dropped.
SELECT *, row_number() OVER (PARTITION BY _source_hash, {cleaned_columns} ORDER BY _row) AS _copy
FROM candidates
