-- name: security_group_open_to_world
-- schedule: */15 * * * *
-- output: results/{name}/{date}.csv
-- window: 15m
--
-- Security group rules opened to the whole internet in the window: ingress rules whose source is
-- a /0 range (0.0.0.0/0 or ::/0), added with AuthorizeSecurityGroupIngress or changed with
-- ModifySecurityGroupRules. Every request shape CloudTrail records is read: ipPermissions
-- items (ipRanges cidrIp, ipv6Ranges cidrIpv6), the older top-level cidrIp, and
-- ModifySecurityGroupRulesRequest's CidrIpv4/CidrIpv6.
-- Reading the result: one row per successful call, oldest first. `open_cidr` is the first
-- /0 range in the request; `protocol`, `from_port` and `to_port` are those of its first
-- permission (-1 means all protocols); `requestparameters` holds every permission of the call.
-- SSH (22), RDP (3389) or database ports open to the world are the usual incident causes.
-- By hand: fill the window as queries/README.md shows.
SELECT eventtime,
       recipientaccountid AS account,
       awsregion,
       eventname,
       COALESCE(json_get_str(requestparameters, 'groupId'),
                json_get_str(requestparameters, 'ModifySecurityGroupRulesRequest', 'GroupId'),
                json_get_str(requestparameters, 'groupName')) AS groupid,
       regexp_match(requestparameters, '"[cC]idrIp(?:v4|v6)?"\s*:\s*"([^"]*/0)"')[1] AS open_cidr,
       COALESCE(json_get_str(requestparameters, 'ipPermissions', 'items', 0, 'ipProtocol'),
                json_get_str(requestparameters, 'ipProtocol'),
                json_get_str(requestparameters, 'ModifySecurityGroupRulesRequest', 'SecurityGroupRule', 'SecurityGroupRule', 'IpProtocol')) AS protocol,
       COALESCE(json_get_int(requestparameters, 'ipPermissions', 'items', 0, 'fromPort'),
                json_get_int(requestparameters, 'fromPort'),
                json_get_int(requestparameters, 'ModifySecurityGroupRulesRequest', 'SecurityGroupRule', 'SecurityGroupRule', 'FromPort')) AS from_port,
       COALESCE(json_get_int(requestparameters, 'ipPermissions', 'items', 0, 'toPort'),
                json_get_int(requestparameters, 'toPort'),
                json_get_int(requestparameters, 'ModifySecurityGroupRulesRequest', 'SecurityGroupRule', 'SecurityGroupRule', 'ToPort')) AS to_port,
       COALESCE(useridentity['arn'], useridentity['invokedby'], useridentity['principalid']) AS identity,
       sourceipaddress,
       requestparameters,
       eventid
FROM events
WHERE eventsource = 'ec2.amazonaws.com'
  AND eventname IN ('AuthorizeSecurityGroupIngress', 'ModifySecurityGroupRules')
  AND errorcode IS NULL
  AND regexp_like(requestparameters, '"[cC]idrIp(?:v4|v6)?"\s*:\s*"[^"]*/0"')
  AND eventtime >= {start} AND eventtime < {end}
ORDER BY eventtime, eventid;
