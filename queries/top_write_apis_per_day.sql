-- name: top_write_apis_per_day
--
-- The ten busiest write (non read-only) APIs of each UTC day over the whole lake: what changes
-- the accounts, how often, and by how many identities. A write API that climbs the ranking, or
-- appears in it for the first time, is a change in behaviour worth explaining.
-- Reading the result: ten rows per day, newest day first, ranked by calls. `errors` counts the
-- failed calls among them; `identities` counts distinct callers (by ARN, or service name).
-- Add `AND eventtime >= TIMESTAMP '2024-06-01T00:00:00Z'` to the WHERE clause to look at a
-- shorter period (only the files of that period are read).
SELECT day, rank, eventsource, eventname, calls, errors, identities
FROM (
    SELECT date_trunc('day', eventtime) AS day,
           eventsource,
           eventname,
           count(*) AS calls,
           count(errorcode) AS errors,
           count(DISTINCT COALESCE(useridentity['arn'], useridentity['invokedby'], useridentity['principalid'])) AS identities,
           row_number() OVER (PARTITION BY date_trunc('day', eventtime) ORDER BY count(*) DESC, eventsource, eventname) AS rank
    FROM events
    WHERE readonly = false
    GROUP BY 1, 2, 3
) AS daily
WHERE rank <= 10
ORDER BY day DESC, rank;
