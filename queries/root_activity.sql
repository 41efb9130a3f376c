-- name: root_activity
-- schedule: 0 6 * * *
-- output: results/{name}/{date}.csv
-- window: 1d
--
-- Every call made with the root user's credentials in the window (console sign-ins, console
-- clicks and root access keys), except calls AWS services make on root's behalf. Root should
-- almost never be used, so each row deserves a look.
-- Reading the result: one row per call, oldest first. `mfa` is "true"/"false" for console
-- sessions and sign-ins and empty for access keys; an `accesskeyid` starting with AKIA means
-- root has a long-lived access key, which should be deleted. A non-empty `errorcode` or
-- `errormessage` is a failed attempt ("Failed authentication" is a wrong password), worth as
-- much attention as a success.
-- By hand: fill the window as queries/README.md shows.
SELECT eventtime,
       recipientaccountid AS account,
       awsregion,
       eventsource,
       eventname,
       sourceipaddress,
       useragent,
       COALESCE(useridentity['sessioncontext']['attributes']['mfaauthenticated'],
                CASE json_get_str(additionaleventdata, 'MFAUsed') WHEN 'Yes' THEN 'true' WHEN 'No' THEN 'false' END) AS mfa,
       useridentity['accesskeyid'] AS accesskeyid,
       errorcode,
       errormessage,
       eventid
FROM events
WHERE useridentity['type'] = 'Root'
  AND useridentity['invokedby'] IS NULL
  AND (eventtype IS DISTINCT FROM 'AwsServiceEvent')
  AND eventtime >= {start} AND eventtime < {end}
ORDER BY eventtime, eventid;
