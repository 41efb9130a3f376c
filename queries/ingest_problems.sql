-- name: ingest_problems
-- What it finds: every rejected record and damaged file from ingest, grouped by reason and
-- file, with an example message, so broken deliveries or schema drift are noticed early.
SELECT reason,
       sourcefile,
       count(*)              AS problems,
       min(recordindex)      AS first_record,
       min(message)          AS example_message
FROM rejects
GROUP BY reason, sourcefile
ORDER BY problems DESC, reason, sourcefile;
