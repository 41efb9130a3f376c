-- name: console_signin_without_mfa
-- schedule: 0 6 * * *
-- output: results/{name}/{date}.csv
-- window: 1d
--
-- Successful AWS console sign-ins by IAM users and root that did not use MFA. A password
-- alone is one phishing e-mail away from an account takeover.
-- Reading the result: one row per sign-in, oldest first. Ask each `username` to enable MFA (or
-- enforce it with an IAM policy). Federated sign-ins (SSO, SAML, assumed roles) are left out:
-- their MFA happens at the identity provider, and CloudTrail always records MFAUsed "No" for
-- them. Failed sign-ins are in failed_console_logins.sql.
-- By hand: fill the window as queries/README.md shows.
SELECT eventtime,
       recipientaccountid AS account,
       useridentity['type'] AS identitytype,
       COALESCE(useridentity['username'], useridentity['arn']) AS username,
       sourceipaddress,
       useragent,
       json_get_str(additionaleventdata, 'MFAUsed') AS mfaused,
       json_get_str(additionaleventdata, 'LoginTo') AS loginto,
       eventid
FROM events
WHERE eventsource = 'signin.amazonaws.com'
  AND eventname = 'ConsoleLogin'
  AND json_get_str(responseelements, 'ConsoleLogin') = 'Success'
  AND (json_get_str(additionaleventdata, 'MFAUsed') IS DISTINCT FROM 'Yes')
  AND useridentity['type'] IN ('IAMUser', 'Root')
  AND eventtime >= {start} AND eventtime < {end}
ORDER BY eventtime, eventid;
