-- Exact duplicates among the candidates: equal in every cleaned column and in every source column (compared
-- through _rest, a hash of all of them that cleaned_rows.sql computes for candidates only, in the same pass).
-- The first copy by file row number is the original (_copy = 1); later copies are dropped.
SELECT c.*, row_number() OVER (PARTITION BY c._rest, {cleaned_columns} ORDER BY c._row) AS _copy
FROM candidates c
