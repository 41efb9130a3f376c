-- name: iam_policy_changes
--
-- Changes to IAM permissions over the whole lake: policies attached to or detached from users,
-- groups and roles, inline policies written or deleted, managed policies created or given a new
-- default version, role trust policies rewritten, and users added to groups. Privilege
-- escalation and persistence go through these calls.
-- Reading the result: one row per successful change, newest first. `target` is the user, group
-- or role changed (or the managed policy, for CreatePolicy and its versions); `policy` is the
-- managed policy ARN or the inline policy name. `grants_admin` is true when the policy is
-- AdministratorAccess or IAMFullAccess, or its document allows every action ("Action": "*");
-- those rows come first within the same time. Check that each change was planned.
-- Add `AND eventtime >= TIMESTAMP '2024-06-01T00:00:00Z'` to the WHERE clause to look at a
-- shorter period.
SELECT eventtime,
       recipientaccountid AS account,
       eventname,
       COALESCE(json_get_str(requestparameters, 'userName'),
                json_get_str(requestparameters, 'groupName'),
                json_get_str(requestparameters, 'roleName'),
                json_get_str(requestparameters, 'policyArn'),
                json_get_str(requestparameters, 'policyName')) AS target,
       COALESCE(json_get_str(requestparameters, 'policyArn'),
                json_get_str(requestparameters, 'policyName')) AS policy,
       COALESCE(regexp_like(json_get_str(requestparameters, 'policyArn'), ':policy/(AdministratorAccess|IAMFullAccess)$')
                OR regexp_like(json_get_str(requestparameters, 'policyDocument'), '"Action"\s*:\s*(\[\s*)?"(\*|iam:\*)"'),
                false) AS grants_admin,
       COALESCE(useridentity['arn'], useridentity['invokedby'], useridentity['principalid']) AS changed_by,
       sourceipaddress,
       eventid
FROM events
WHERE eventsource = 'iam.amazonaws.com'
  AND eventname IN ('AttachUserPolicy', 'AttachGroupPolicy', 'AttachRolePolicy',
                    'DetachUserPolicy', 'DetachGroupPolicy', 'DetachRolePolicy',
                    'PutUserPolicy', 'PutGroupPolicy', 'PutRolePolicy',
                    'DeleteUserPolicy', 'DeleteGroupPolicy', 'DeleteRolePolicy',
                    'CreatePolicy', 'CreatePolicyVersion', 'SetDefaultPolicyVersion', 'DeletePolicy',
                    'UpdateAssumeRolePolicy', 'AddUserToGroup')
  AND errorcode IS NULL
ORDER BY eventtime DESC, grants_admin DESC, eventid;
