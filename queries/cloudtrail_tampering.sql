-- name: cloudtrail_tampering
-- schedule: */15 * * * *
-- output: results/{name}/{date}.csv
-- window: 15m
--
-- Attempts to blind CloudTrail in the window: stopping or deleting a trail, changing what it
-- records (event selectors, insight selectors), updating it (e.g. to another bucket) and the
-- same for CloudTrail Lake event data stores. Attackers do this first; failed attempts are
-- listed too, because an attempt is already a signal.
-- Reading the result: one row per call, oldest first. `trail` names the trail or data store;
-- `errorcode` empty means the change happened. For PutEventSelectors, `requestparameters`
-- shows what is still recorded ("includeManagementEvents": false turns management events off).
-- Any row not explained by a planned change needs an immediate look.
-- By hand: fill the window as queries/README.md shows.
SELECT eventtime,
       recipientaccountid AS account,
       awsregion,
       eventname,
       COALESCE(json_get_str(requestparameters, 'name'),
                json_get_str(requestparameters, 'trailName'),
                json_get_str(requestparameters, 'eventDataStore')) AS trail,
       COALESCE(useridentity['arn'], useridentity['invokedby'], useridentity['principalid']) AS identity,
       sourceipaddress,
       useragent,
       errorcode,
       requestparameters,
       eventid
FROM events
WHERE eventsource = 'cloudtrail.amazonaws.com'
  AND eventname IN ('StopLogging', 'DeleteTrail', 'UpdateTrail', 'PutEventSelectors', 'PutInsightSelectors',
                    'DeleteEventDataStore', 'UpdateEventDataStore', 'StopEventDataStoreIngestion')
  AND eventtime >= {start} AND eventtime < {end}
ORDER BY eventtime, eventid;
