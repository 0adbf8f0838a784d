-- Duplicate candidates: every _key (a cheap fingerprint of a few columns) that occurs more than once.
-- Exact duplicates share their _key; the few rows whose _key is not unique are compared exactly later.
SELECT _key FROM classified GROUP BY _key HAVING count(*) > 1
