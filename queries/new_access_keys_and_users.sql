-- name: new_access_keys_and_users
--
-- New IAM users, access keys and console passwords over the whole lake (CreateUser,
-- CreateAccessKey, CreateLoginProfile, UpdateLoginProfile). New long-lived credentials are how
-- an intruder stays in an account after the first foothold.
-- Reading the result: one row per successful call, newest first. `username` is the user the
-- credential belongs to (for CreateAccessKey without a user name, the caller itself);
-- `accesskeyid` is the new key, when the response carries it. A key created for someone else
-- (`for_another_user` true), by an unusual identity, or from an unusual `sourceipaddress`
-- deserves a look.
-- Add `AND eventtime >= TIMESTAMP '2024-06-01T00:00:00Z'` to the WHERE clause to look at a
-- shorter period.
SELECT eventtime,
       recipientaccountid AS account,
       eventname,
       username,
       json_get_str(responseelements, 'accessKey', 'accessKeyId') AS accesskeyid,
       identity AS created_by,
       (username IS DISTINCT FROM useridentity['username']) AS for_another_user,
       sourceipaddress,
       useragent,
       eventid
FROM (
    SELECT *,
           COALESCE(json_get_str(requestparameters, 'userName'),
                    json_get_str(responseelements, 'accessKey', 'userName'),
                    useridentity['username']) AS username,
           COALESCE(useridentity['arn'], useridentity['invokedby'], useridentity['principalid']) AS identity
    FROM events
    WHERE eventsource = 'iam.amazonaws.com'
      AND eventname IN ('CreateUser', 'CreateAccessKey', 'CreateLoginProfile', 'UpdateLoginProfile')
      AND errorcode IS NULL
) AS created
ORDER BY eventtime DESC, eventid;
