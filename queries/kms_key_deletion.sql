-- name: kms_key_deletion
--
-- KMS keys scheduled for deletion or disabled, over the whole lake, and whether that was undone.
-- Data encrypted under a deleted key is lost for good, so deleting or disabling a key is both
-- a sabotage (ransom) technique and a costly mistake.
-- Reading the result: one row per successful ScheduleKeyDeletion or DisableKey, newest first.
-- `pending_days` is the waiting period before deletion and `deletion_date` the day AWS gave for
-- it. `undone_at` is the first later CancelKeyDeletion or EnableKey of the same key; when it is
-- empty the key is still pending deletion (or disabled): act before `deletion_date`.
-- Add `AND eventtime >= TIMESTAMP '2024-06-01T00:00:00Z'` to the WHERE clause of `changes` to
-- look at a shorter period.
WITH changes AS (
    SELECT eventtime,
           recipientaccountid AS account,
           awsregion,
           eventname,
           -- The response names the key by ARN; the request may use its ID or ARN.
           regexp_replace(COALESCE(json_get_str(responseelements, 'keyId'),
                                   json_get_str(requestparameters, 'keyId')), '^.*:key/', '') AS keyid,
           json_get_int(requestparameters, 'pendingWindowInDays') AS pending_days,
           json_get_str(responseelements, 'deletionDate') AS deletion_date,
           COALESCE(useridentity['arn'], useridentity['invokedby'], useridentity['principalid']) AS identity,
           sourceipaddress,
           eventid
    FROM events
    WHERE eventsource = 'kms.amazonaws.com'
      AND eventname IN ('ScheduleKeyDeletion', 'DisableKey', 'CancelKeyDeletion', 'EnableKey')
      AND errorcode IS NULL
)
SELECT c.eventtime, c.account, c.awsregion, c.eventname, c.keyid, c.pending_days, c.deletion_date,
       min(u.eventtime) AS undone_at,
       c.identity, c.sourceipaddress, c.eventid
FROM changes AS c
LEFT JOIN changes AS u
  ON u.keyid = c.keyid AND u.account = c.account AND u.awsregion = c.awsregion
 AND u.eventtime > c.eventtime
 AND u.eventname = CASE c.eventname WHEN 'ScheduleKeyDeletion' THEN 'CancelKeyDeletion' ELSE 'EnableKey' END
WHERE c.eventname IN ('ScheduleKeyDeletion', 'DisableKey')
GROUP BY c.eventtime, c.account, c.awsregion, c.eventname, c.keyid, c.pending_days, c.deletion_date,
         c.identity, c.sourceipaddress, c.eventid
ORDER BY c.eventtime DESC, c.eventid;
