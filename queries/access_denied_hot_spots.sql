-- name: access_denied_hot_spots
-- schedule: 0 * * * *
-- output: results/{name}/{date}.csv
-- window: 1h
--
-- Identities whose calls were refused for lack of permission in the window: AccessDenied,
-- AccessDeniedException, (Client.)UnauthorizedOperation and the like. A burst of denials is
-- what a stolen credential probing its permissions looks like; a steady trickle is usually a
-- misconfigured policy or application.
-- Reading the result: one row per identity (assumed-role sessions by role session ARN, AWS
-- services by service name), most denials first. `denied_pct` is the share of the identity's
-- calls in the window that were denied: near 100 with many `denied_apis` is probing, a low
-- share on one API is usually a missing permission. `apis` lists the denied APIs.
-- By hand: fill the window as queries/README.md shows.
SELECT identity,
       identitytype,
       account,
       count(*) FILTER (WHERE denied) AS denials,
       count(*) AS calls,
       round(100.0 * count(*) FILTER (WHERE denied) / count(*), 1) AS denied_pct,
       count(DISTINCT eventsource || ':' || eventname) FILTER (WHERE denied) AS denied_apis,
       string_agg(DISTINCT eventname, ' ' ORDER BY eventname) FILTER (WHERE denied) AS apis,
       count(DISTINCT sourceipaddress) FILTER (WHERE denied) AS source_ips,
       min(eventtime) FILTER (WHERE denied) AS first_denied,
       max(eventtime) FILTER (WHERE denied) AS last_denied
FROM (
    SELECT COALESCE(useridentity['arn'], useridentity['invokedby'], useridentity['principalid']) AS identity,
           useridentity['type'] AS identitytype,
           recipientaccountid AS account,
           eventsource,
           eventname,
           sourceipaddress,
           eventtime,
           COALESCE(errorcode LIKE '%AccessDenied%'
                    OR errorcode LIKE '%UnauthorizedOperation'
                    OR errorcode LIKE '%UnauthorizedAccess'
                    OR errorcode = 'AuthorizationError', false) AS denied
    FROM events
    WHERE eventtime >= {start} AND eventtime < {end}
) AS calls
GROUP BY identity, identitytype, account
HAVING count(*) FILTER (WHERE denied) > 0
ORDER BY denials DESC, identity, account;
