-- name: failed_console_logins
--
-- Failed console sign-ins over the whole lake, by user and source IP, with the last successful
-- sign-in of the same user from the same IP. Many failures from one IP are password guessing;
-- failures followed by a success from that IP may be a guessed password.
-- Reading the result: one row per (account, user, source IP) with at least one failure, most
-- failures first. `last_success` after `first_failure` deserves a look. A `username` of
-- HIDDEN_DUE_TO_SECURITY_REASONS means the user name typed does not exist in the account.
-- Add `AND eventtime >= TIMESTAMP '2024-06-01T00:00:00Z'` to the WHERE clause to look at a
-- shorter period.
SELECT recipientaccountid AS account,
       COALESCE(useridentity['username'], useridentity['arn'], useridentity['principalid']) AS username,
       sourceipaddress,
       count(*) FILTER (WHERE outcome = 'Failure') AS failures,
       min(eventtime) FILTER (WHERE outcome = 'Failure') AS first_failure,
       max(eventtime) FILTER (WHERE outcome = 'Failure') AS last_failure,
       max(eventtime) FILTER (WHERE outcome = 'Success') AS last_success,
       min(errormessage) AS errormessage
FROM (
    SELECT *, json_get_str(responseelements, 'ConsoleLogin') AS outcome
    FROM events
    WHERE eventsource = 'signin.amazonaws.com' AND eventname = 'ConsoleLogin'
) AS logins
GROUP BY 1, 2, 3
HAVING count(*) FILTER (WHERE outcome = 'Failure') > 0
ORDER BY failures DESC, account, username, sourceipaddress;
