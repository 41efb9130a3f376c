-- name: new_ips_and_user_agents
-- schedule: 30 6 * * *
-- output: results/{name}/{date}.csv
-- window: 1d
--
-- Source IP addresses and user agents an identity used for the first time in the window,
-- compared with its previous 90 days. Stolen credentials are usually used from somewhere new
-- and with a different tool (python-requests, a pentest framework) than their owner's.
-- Identities first seen in the window are left out (everything of theirs is new), and so are
-- AWS services. Assumed-role sessions count as their role, so a role's usual sources are
-- learned across sessions. Private addresses (10/8, 172.16/12, 192.168/16: a new instance in a
-- VPC) and source names that are not addresses ("AWS Internal", a service's name) are not
-- reported as new IPs.
-- Reading the result: one row per (identity, new source IP or user agent), grouped by identity.
-- `kind` says which; `calls` and `apis` are what was done from it in the window. A new IP with
-- sensitive `apis` (IAM, STS, secrets) and a new agent at once is the strongest signal; a new
-- version of the usual SDK is routine.
-- By hand: fill the window as queries/README.md shows.
WITH calls AS (
    SELECT COALESCE(useridentity['sessioncontext']['sessionissuer']['arn'], useridentity['arn'], useridentity['principalid']) AS identity,
           eventtime, sourceipaddress, useragent, eventname
    FROM events
    WHERE eventtime >= {start} - INTERVAL '90 days' AND eventtime < {end}
      AND (useridentity['type'] IS DISTINCT FROM 'AWSService')
),
known AS (
    SELECT DISTINCT identity FROM calls WHERE eventtime < {start}
),
firsts AS (
    SELECT identity, 'sourceipaddress' AS kind, sourceipaddress AS value,
           min(eventtime) AS first_seen, count(*) AS calls,
           string_agg(DISTINCT eventname, ' ' ORDER BY eventname) AS apis
    FROM calls
    WHERE regexp_like(sourceipaddress, '^[0-9]{1,3}(\.[0-9]{1,3}){3}$|:')
      AND NOT regexp_like(sourceipaddress, '^(10\.|192\.168\.|172\.(1[6-9]|2[0-9]|3[01])\.)')
    GROUP BY identity, sourceipaddress
    HAVING min(eventtime) >= {start}
    UNION ALL
    SELECT identity, 'useragent' AS kind, useragent AS value,
           min(eventtime) AS first_seen, count(*) AS calls,
           string_agg(DISTINCT eventname, ' ' ORDER BY eventname) AS apis
    FROM calls
    GROUP BY identity, useragent
    HAVING min(eventtime) >= {start}
)
SELECT f.identity, f.kind, f.value, f.first_seen, f.calls, f.apis
FROM firsts AS f
JOIN known AS k ON k.identity = f.identity
WHERE f.value IS NOT NULL
ORDER BY f.identity, f.kind, f.first_seen, f.value;
