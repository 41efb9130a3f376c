//! The shipped queries (`queries/*.sql`) return the rows they should.
//!
//! One lake serves every test: a generated archive (January 2024, one account) plus hand-written
//! records in another account (20-21 January and 1 February 2024) holding what the generator
//! never makes: root activity, console sign-ins, CloudTrail tampering, KMS deletions, each with
//! near misses beside it (a sign-in with MFA, a rule opened to 10.0.0.0/8, an event one second
//! outside the window). Queries run through the binary on the shipped files. Hand-written rows
//! are checked column by column; rows from the generated archive are checked against the same
//! logic computed here in Rust over the archive's records.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common::*;
use serde_json::{Value, json};

const ACCT: &str = "111122223333";
const OPS_ARN: &str = "arn:aws:iam::111122223333:user/ops";
const OPS_IP: &str = "198.51.100.1";
const OPS_UA: &str = "aws-cli/2.15.0";
/// The day of the hand-written alert cases, and the window the windowed queries use for them.
const DAY: (&str, &str) = ("2024-02-01T00:00:00Z", "2024-02-02T00:00:00Z");

// ---------------------------------------------------------------------------------------------
// Hand-written records

fn iam_user(name: &str) -> Value {
    json!({"type": "IAMUser", "principalId": format!("AIDA{}", name.to_uppercase()), "arn": format!("arn:aws:iam::{ACCT}:user/{name}"),
           "accountId": ACCT, "accessKeyId": format!("AKIA{}", name.to_uppercase()), "userName": name})
}

fn root_identity() -> Value {
    json!({"type": "Root", "principalId": ACCT, "arn": format!("arn:aws:iam::{ACCT}:root"), "accountId": ACCT})
}

fn assumed_role(role: &str, session: &str) -> Value {
    json!({"type": "AssumedRole", "principalId": format!("AROA{}:{session}", role.to_uppercase()),
           "arn": format!("arn:aws:sts::{ACCT}:assumed-role/{role}/{session}"), "accountId": ACCT, "accessKeyId": "ASIAEXAMPLE",
           "sessionContext": {"sessionIssuer": {"type": "Role", "principalId": format!("AROA{}", role.to_uppercase()),
               "arn": format!("arn:aws:iam::{ACCT}:role/{role}"), "accountId": ACCT, "userName": role},
               "attributes": {"creationDate": "2024-01-01T00:00:00Z", "mfaAuthenticated": "false"}}})
}

/// A record of the hand-written account: by `ops`, from its usual IP and agent, unless `patch`
/// says otherwise (top-level keys of `patch` replace the record's).
fn ev(id: &str, time: &str, source: &str, name: &str, patch: Value) -> Value {
    let mut r = record(id, time, "us-east-1");
    r["recipientAccountId"] = json!(ACCT);
    r["userIdentity"] = iam_user("ops");
    r["eventSource"] = json!(source);
    r["eventName"] = json!(name);
    r["sourceIPAddress"] = json!(OPS_IP);
    r["userAgent"] = json!(OPS_UA);
    r["requestParameters"] = Value::Null;
    r["readOnly"] = json!(["Describe", "Get", "List", "Lookup"].iter().any(|p| name.starts_with(p)));
    for (k, v) in patch.as_object().expect("patch is an object") {
        r[k] = v.clone();
    }
    r
}

fn console_login(id: &str, time: &str, identity: Value, ip: &str, success: bool, mfa: &str) -> Value {
    let mut patch = json!({
        "userIdentity": identity, "sourceIPAddress": ip, "userAgent": "Mozilla/5.0 (X11; Linux x86_64)",
        "eventType": "AwsConsoleSignIn", "readOnly": false,
        "responseElements": {"ConsoleLogin": if success { "Success" } else { "Failure" }},
        "additionalEventData": {"LoginTo": "https://console.aws.amazon.com/console/home", "MobileVersion": "No", "MFAUsed": mfa},
    });
    if !success {
        patch["errorMessage"] = json!("Failed authentication");
    }
    ev(id, time, "signin.amazonaws.com", "ConsoleLogin", patch)
}

fn at(hms: &str) -> String {
    format!("2024-02-01T{hms}Z")
}

fn hand_records() -> Vec<Value> {
    let mut v = Vec::new();
    let d = |s: &str| at(s);
    // Baselines for new_ips_and_user_agents: ops and the deployer role are known before the window.
    v.push(ev("ops-baseline", "2024-01-20T10:00:00Z", "ec2.amazonaws.com", "DescribeInstances", json!({})));
    v.push(ev(
        "deployer-baseline",
        "2024-01-20T11:00:00Z",
        "cloudformation.amazonaws.com",
        "UpdateStack",
        json!({"userIdentity": assumed_role("deployer", "build-1"), "sourceIPAddress": "198.51.100.20", "userAgent": "terraform/1.7"}),
    ));
    let service = json!({"type": "AWSService", "invokedBy": "config.amazonaws.com"});
    v.push(ev(
        "svc-baseline",
        "2024-01-20T12:00:00Z",
        "s3.amazonaws.com",
        "GetBucketAcl",
        json!({"userIdentity": service, "sourceIPAddress": "config.amazonaws.com", "userAgent": "config.amazonaws.com"}),
    ));

    // top_write_apis_per_day on 21 January: WriteApiNN is called NN times; autoscaling's WriteApi05
    // ties with ec2's and sorts first; 50 reads do not count; WriteApi10 has 2 errors and 2 callers.
    let mut n = 0;
    let mut write = |v: &mut Vec<Value>, source: &str, api: &str, patch: Value| {
        n += 1;
        let time = format!("2024-01-21T{:02}:{:02}:00Z", n / 60, n % 60);
        v.push(ev(&format!("w{n:03}"), &time, source, api, patch));
    };
    for i in 1..=11 {
        for c in 0..i {
            let mut patch = json!({});
            if i == 10 && c < 2 {
                patch = json!({"errorCode": "AccessDenied", "errorMessage": "denied", "userIdentity": iam_user("tf")});
            }
            write(&mut v, "ec2.amazonaws.com", &format!("WriteApi{i:02}"), patch);
        }
    }
    for _ in 0..5 {
        write(&mut v, "autoscaling.amazonaws.com", "WriteApi05", json!({}));
    }
    for _ in 0..50 {
        write(&mut v, "ec2.amazonaws.com", "DescribeThings", json!({}));
    }

    // root_activity
    v.push(console_login("root-console-mfa", &d("00:00:00"), root_identity(), "203.0.113.5", true, "Yes"));
    let mut root_key = root_identity();
    root_key["accessKeyId"] = json!("AKIAROOTKEY0001");
    v.push(ev(
        "root-access-key",
        &d("10:00:00"),
        "ec2.amazonaws.com",
        "DescribeInstances",
        json!({"userIdentity": root_key, "sourceIPAddress": "203.0.113.5"}),
    ));
    v.push(console_login("root-console-failed", &d("11:00:00"), root_identity(), "203.0.113.5", false, "No"));
    v.push(console_login("root-console-nomfa", &d("12:00:00"), root_identity(), "203.0.113.5", true, "No"));
    let mut by_service = root_identity();
    by_service["invokedBy"] = json!("support.amazonaws.com");
    v.push(ev("root-by-service", &d("13:00:00"), "support.amazonaws.com", "DescribeCases", json!({"userIdentity": by_service})));
    v.push(ev(
        "root-service-event",
        &d("13:30:00"),
        "health.amazonaws.com",
        "HealthEvent",
        json!({"userIdentity": root_identity(), "eventType": "AwsServiceEvent"}),
    ));
    v.push(ev("user-named-root", &d("13:40:00"), "ec2.amazonaws.com", "DescribeInstances", json!({"userIdentity": iam_user("root")})));
    v.push(ev("root-at-end", DAY.1, "ec2.amazonaws.com", "DescribeInstances", json!({"userIdentity": root_identity()})));

    // console_signin_without_mfa and failed_console_logins
    v.push(console_login("signin-nomfa", &d("09:00:00"), iam_user("carol"), "198.51.100.30", true, "No"));
    v.push(console_login("signin-mfa", &d("09:10:00"), iam_user("carol"), "198.51.100.30", true, "Yes"));
    v.push(console_login("signin-federated", &d("09:20:00"), assumed_role("AWSReservedSSO_Admin", "carol@example.com"), "198.51.100.30", true, "No"));
    v.push(console_login("login-fail-1", &d("08:00:00"), iam_user("dave"), "192.0.2.50", false, "No"));
    v.push(console_login("login-fail-2", &d("08:01:00"), iam_user("dave"), "192.0.2.50", false, "No"));
    v.push(console_login("login-ok-after", &d("08:05:00"), iam_user("dave"), "192.0.2.50", true, "Yes"));
    let hidden = json!({"type": "IAMUser", "accountId": ACCT, "accessKeyId": "", "userName": "HIDDEN_DUE_TO_SECURITY_REASONS"});
    v.push(console_login("login-fail-unknown", &d("09:30:00"), hidden, "198.51.100.77", false, "No"));

    // new_access_keys_and_users
    let key = |user: &str, id: &str| json!({"accessKey": {"accessKeyId": id, "status": "Active", "userName": user, "createDate": "Feb 1, 2024 1:01:00 PM"}});
    v.push(ev(
        "create-user",
        &d("13:00:00"),
        "iam.amazonaws.com",
        "CreateUser",
        json!({"requestParameters": {"userName": "mallory"}, "responseElements": {"user": {"userName": "mallory", "userId": "AIDAMALLORY"}}}),
    ));
    v.push(ev(
        "create-key-other",
        &d("13:01:00"),
        "iam.amazonaws.com",
        "CreateAccessKey",
        json!({"requestParameters": {"userName": "mallory"}, "responseElements": key("mallory", "AKIAMALLORY0001")}),
    ));
    v.push(ev(
        "create-key-self",
        &d("13:02:00"),
        "iam.amazonaws.com",
        "CreateAccessKey",
        json!({"userIdentity": iam_user("bob"), "responseElements": key("bob", "AKIABOB0002")}),
    ));
    v.push(ev(
        "create-login-profile",
        &d("13:03:00"),
        "iam.amazonaws.com",
        "CreateLoginProfile",
        json!({"requestParameters": {"userName": "mallory", "passwordResetRequired": false}}),
    ));
    v.push(ev(
        "create-key-failed",
        &d("13:04:00"),
        "iam.amazonaws.com",
        "CreateAccessKey",
        json!({"requestParameters": {"userName": "mallory"}, "errorCode": "LimitExceeded", "errorMessage": "too many keys"}),
    ));
    v.push(ev(
        "delete-key",
        &d("13:05:00"),
        "iam.amazonaws.com",
        "DeleteAccessKey",
        json!({"requestParameters": {"userName": "mallory", "accessKeyId": "AKIAOLD"}}),
    ));

    // access_denied_hot_spots, window 14:00-15:00
    let eve = |ip: &str| json!({"userIdentity": iam_user("eve"), "sourceIPAddress": ip});
    let denied = |code: &str, ip: &str| {
        let mut p = eve(ip);
        p["errorCode"] = json!(code);
        p["errorMessage"] = json!("not authorized");
        p
    };
    v.push(ev("deny-1", &d("14:00:00"), "s3.amazonaws.com", "ListBuckets", denied("AccessDenied", "203.0.113.66")));
    v.push(ev("deny-2", &d("14:01:00"), "s3.amazonaws.com", "ListBuckets", denied("AccessDenied", "203.0.113.66")));
    v.push(ev("deny-3", &d("14:02:00"), "secretsmanager.amazonaws.com", "GetSecretValue", denied("AccessDeniedException", "203.0.113.66")));
    v.push(ev("deny-4", &d("14:03:00"), "ec2.amazonaws.com", "DescribeInstances", denied("Client.UnauthorizedOperation", "203.0.113.66")));
    v.push(ev("deny-5", &d("14:04:00"), "iam.amazonaws.com", "ListUsers", denied("AccessDenied", "203.0.113.67")));
    v.push(ev("eve-ok", &d("14:05:00"), "sts.amazonaws.com", "GetCallerIdentity", eve("203.0.113.66")));
    let frank = |code: &str| json!({"userIdentity": iam_user("frank"), "errorCode": code, "errorMessage": "failed"});
    v.push(ev("frank-throttle", &d("14:10:00"), "ec2.amazonaws.com", "DescribeInstances", frank("ThrottlingException")));
    v.push(ev("frank-nosuch", &d("14:11:00"), "iam.amazonaws.com", "GetUser", frank("NoSuchEntity")));
    v.push(ev(
        "grace-denied",
        &d("14:20:00"),
        "kms.amazonaws.com",
        "Decrypt",
        json!({"userIdentity": assumed_role("app", "grace"), "errorCode": "AccessDeniedException", "errorMessage": "no"}),
    ));
    v.push(ev("deny-at-end", &d("15:00:00"), "s3.amazonaws.com", "ListBuckets", denied("AccessDenied", "203.0.113.66")));

    // cloudtrail_tampering
    let trail = |p: Value| json!({"requestParameters": p});
    v.push(ev(
        "trail-stop",
        &d("16:00:00"),
        "cloudtrail.amazonaws.com",
        "StopLogging",
        trail(json!({"name": format!("arn:aws:cloudtrail:us-east-1:{ACCT}:trail/main")})),
    ));
    let mut delete = trail(json!({"name": "main"}));
    delete["errorCode"] = json!("AccessDenied");
    delete["errorMessage"] = json!("not authorized");
    v.push(ev("trail-delete-denied", &d("16:05:00"), "cloudtrail.amazonaws.com", "DeleteTrail", delete));
    v.push(ev(
        "trail-selectors",
        &d("16:10:00"),
        "cloudtrail.amazonaws.com",
        "PutEventSelectors",
        trail(json!({"trailName": "main", "eventSelectors": [{"readWriteType": "All", "includeManagementEvents": false, "dataResources": []}]})),
    ));
    v.push(ev("trail-update", &d("16:15:00"), "cloudtrail.amazonaws.com", "UpdateTrail", trail(json!({"name": "main", "s3BucketName": "elsewhere"}))));
    v.push(ev("trail-start", &d("16:20:00"), "cloudtrail.amazonaws.com", "StartLogging", trail(json!({"name": "main"}))));
    v.push(ev("trail-create", &d("16:21:00"), "cloudtrail.amazonaws.com", "CreateTrail", trail(json!({"name": "second"}))));

    // security_group_open_to_world
    let perm = |proto: &str, port: Option<i64>, v4: &[&str], v6: &[&str]| {
        let mut p = json!({"ipProtocol": proto,
            "ipRanges": {"items": v4.iter().map(|c| json!({"cidrIp": c})).collect::<Vec<_>>()},
            "ipv6Ranges": {"items": v6.iter().map(|c| json!({"cidrIpv6": c})).collect::<Vec<_>>()}});
        if let Some(port) = port {
            p["fromPort"] = json!(port);
            p["toPort"] = json!(port);
        }
        p
    };
    let ingress = |group: &str, perms: Vec<Value>| json!({"requestParameters": {"groupId": group, "ipPermissions": {"items": perms}}});
    v.push(ev(
        "sg-world-ssh",
        &d("17:00:00"),
        "ec2.amazonaws.com",
        "AuthorizeSecurityGroupIngress",
        ingress("sg-0aaa", vec![perm("tcp", Some(22), &["0.0.0.0/0"], &[])]),
    ));
    v.push(ev(
        "sg-world-v6-rdp",
        &d("17:05:00"),
        "ec2.amazonaws.com",
        "AuthorizeSecurityGroupIngress",
        ingress("sg-0bbb", vec![perm("tcp", Some(3389), &["10.0.0.0/8"], &["::/0"])]),
    ));
    v.push(ev(
        "sg-legacy-flat",
        &d("17:10:00"),
        "ec2.amazonaws.com",
        "AuthorizeSecurityGroupIngress",
        json!({"requestParameters": {"groupId": "sg-0ccc", "cidrIp": "0.0.0.0/0", "ipProtocol": "tcp", "fromPort": 5432, "toPort": 5432, "ipPermissions": {}}}),
    ));
    v.push(ev(
        "sg-modify-rule",
        &d("17:15:00"),
        "ec2.amazonaws.com",
        "ModifySecurityGroupRules",
        json!({"requestParameters": {"ModifySecurityGroupRulesRequest": {"GroupId": "sg-0ddd", "SecurityGroupRule": {"SecurityGroupRuleId": "sgr-0123",
            "SecurityGroupRule": {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "CidrIpv4": "0.0.0.0/0", "Description": "web"}}}}}),
    ));
    v.push(ev(
        "sg-private",
        &d("17:20:00"),
        "ec2.amazonaws.com",
        "AuthorizeSecurityGroupIngress",
        ingress("sg-0eee", vec![perm("tcp", Some(22), &["10.0.0.0/8"], &[])]),
    ));
    let mut duplicate = ingress("sg-0aaa", vec![perm("tcp", Some(22), &["0.0.0.0/0"], &[])]);
    duplicate["errorCode"] = json!("Client.InvalidPermission.Duplicate");
    v.push(ev("sg-duplicate", &d("17:25:00"), "ec2.amazonaws.com", "AuthorizeSecurityGroupIngress", duplicate));
    v.push(ev(
        "sg-egress",
        &d("17:30:00"),
        "ec2.amazonaws.com",
        "AuthorizeSecurityGroupEgress",
        ingress("sg-0aaa", vec![perm("-1", None, &["0.0.0.0/0"], &[])]),
    ));
    v.push(ev(
        "sg-narrow",
        &d("17:35:00"),
        "ec2.amazonaws.com",
        "AuthorizeSecurityGroupIngress",
        ingress("sg-0fff", vec![perm("tcp", Some(443), &["203.0.113.0/24"], &[])]),
    ));
    v.push(ev(
        "sg-all-protocols",
        &d("17:40:00"),
        "ec2.amazonaws.com",
        "AuthorizeSecurityGroupIngress",
        ingress("sg-0999", vec![perm("-1", None, &["0.0.0.0/0"], &[])]),
    ));

    // kms_key_deletion
    let key_arn = |k: &str| format!("arn:aws:kms:us-east-1:{ACCT}:key/{k}");
    let (ka, kb, kc) = ("aaaaaaaa-1111-2222-3333-444444444444", "bbbbbbbb-1111-2222-3333-444444444444", "cccccccc-1111-2222-3333-444444444444");
    v.push(ev(
        "kms-schedule-a",
        &d("18:00:00"),
        "kms.amazonaws.com",
        "ScheduleKeyDeletion",
        json!({"requestParameters": {"keyId": ka, "pendingWindowInDays": 7},
               "responseElements": {"keyId": key_arn(ka), "deletionDate": "Feb 8, 2024, 6:00:00 PM", "keyState": "PendingDeletion", "pendingWindowInDays": 7}}),
    ));
    v.push(ev(
        "kms-cancel-a",
        &d("18:30:00"),
        "kms.amazonaws.com",
        "CancelKeyDeletion",
        json!({"requestParameters": {"keyId": key_arn(ka)}, "responseElements": {"keyId": key_arn(ka)}}),
    ));
    v.push(ev(
        "kms-cancel-b-before",
        &d("18:05:00"),
        "kms.amazonaws.com",
        "CancelKeyDeletion",
        json!({"requestParameters": {"keyId": kb}, "responseElements": {"keyId": key_arn(kb)}}),
    ));
    v.push(ev("kms-schedule-b", &d("18:10:00"), "kms.amazonaws.com", "ScheduleKeyDeletion",
        json!({"requestParameters": {"keyId": key_arn(kb), "pendingWindowInDays": 30},
               "responseElements": {"keyId": key_arn(kb), "deletionDate": "Mar 2, 2024, 6:10:00 PM", "keyState": "PendingDeletion", "pendingWindowInDays": 30}})));
    v.push(ev("kms-disable-c", &d("18:20:00"), "kms.amazonaws.com", "DisableKey", json!({"requestParameters": {"keyId": kc}})));
    v.push(ev("kms-enable-c", &d("18:40:00"), "kms.amazonaws.com", "EnableKey", json!({"requestParameters": {"keyId": key_arn(kc)}})));
    v.push(ev(
        "kms-schedule-denied",
        &d("18:50:00"),
        "kms.amazonaws.com",
        "ScheduleKeyDeletion",
        json!({"requestParameters": {"keyId": kc, "pendingWindowInDays": 7}, "errorCode": "AccessDeniedException", "errorMessage": "no"}),
    ));

    // s3_bucket_exposure
    let policy = |bucket: &str, principal: Value| {
        json!({"requestParameters": {"bucketName": bucket, "Host": format!("{bucket}.s3.amazonaws.com"), "policy": [""],
        "bucketPolicy": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": principal, "Action": "s3:GetObject", "Resource": format!("arn:aws:s3:::{bucket}/*")}]}}})
    };
    let pab = |bucket: Option<&str>, block_policy: bool| {
        let mut p = json!({"PublicAccessBlockConfiguration": {"BlockPublicAcls": true, "IgnorePublicAcls": true, "BlockPublicPolicy": block_policy, "RestrictPublicBuckets": true}});
        if let Some(b) = bucket {
            p["bucketName"] = json!(b);
        }
        json!({"requestParameters": p})
    };
    v.push(ev("s3-policy-public", &d("19:00:00"), "s3.amazonaws.com", "PutBucketPolicy", policy("public-site", json!("*"))));
    v.push(ev(
        "s3-policy-account",
        &d("19:01:00"),
        "s3.amazonaws.com",
        "PutBucketPolicy",
        policy("shared", json!({"AWS": format!("arn:aws:iam::{ACCT}:root")})),
    ));
    v.push(ev("s3-policy-aws-star", &d("19:02:00"), "s3.amazonaws.com", "PutBucketPolicy", policy("shared", json!({"AWS": "*"}))));
    v.push(ev(
        "s3-acl-allusers",
        &d("19:03:00"),
        "s3.amazonaws.com",
        "PutBucketAcl",
        json!({"requestParameters": {"bucketName": "logs", "acl": [""], "AccessControlPolicy": {"AccessControlList": {"Grant": [
            {"Grantee": {"xsi:type": "Group", "URI": "http://acs.amazonaws.com/groups/global/AllUsers"}, "Permission": "READ"}]}}}}),
    ));
    v.push(ev(
        "s3-acl-private",
        &d("19:04:00"),
        "s3.amazonaws.com",
        "PutBucketAcl",
        json!({"requestParameters": {"bucketName": "logs", "x-amz-acl": ["private"]}}),
    ));
    v.push(ev("s3-pab-off", &d("19:05:00"), "s3.amazonaws.com", "PutBucketPublicAccessBlock", pab(Some("data"), false)));
    v.push(ev("s3-pab-on", &d("19:06:00"), "s3.amazonaws.com", "PutBucketPublicAccessBlock", pab(Some("data"), true)));
    v.push(ev("s3-pab-delete", &d("19:07:00"), "s3.amazonaws.com", "DeleteBucketPublicAccessBlock", json!({"requestParameters": {"bucketName": "data"}})));
    v.push(ev("s3-account-pab", &d("19:08:00"), "s3.amazonaws.com", "PutAccountPublicAccessBlock", pab(None, true)));
    let mut failed = policy("public-site", json!("*"));
    failed["errorCode"] = json!("MalformedPolicy");
    v.push(ev("s3-policy-failed", &d("19:09:00"), "s3.amazonaws.com", "PutBucketPolicy", failed));
    v.push(ev("s3-get-policy", &d("19:10:00"), "s3.amazonaws.com", "GetBucketPolicy", json!({"requestParameters": {"bucketName": "shared"}})));

    // new_ips_and_user_agents
    let from = |ip: &str, ua: &str| json!({"sourceIPAddress": ip, "userAgent": ua});
    v.push(ev("ops-new-ip", &d("20:00:00"), "iam.amazonaws.com", "ListUsers", from("203.0.113.99", "python-requests/2.31.0")));
    v.push(ev("ops-new-ip-2", &d("20:05:00"), "sts.amazonaws.com", "GetCallerIdentity", from("203.0.113.99", "python-requests/2.31.0")));
    let deployer = |session: &str, ip: &str| json!({"userIdentity": assumed_role("deployer", session), "sourceIPAddress": ip, "userAgent": "terraform/1.7"});
    v.push(ev("deployer-same-ip", &d("20:10:00"), "cloudformation.amazonaws.com", "UpdateStack", deployer("build-2", "198.51.100.20")));
    v.push(ev("deployer-new-ip", &d("20:15:00"), "cloudformation.amazonaws.com", "UpdateStack", deployer("build-3", "198.51.100.21")));
    v.push(ev("ops-private-ip", &d("20:06:00"), "ec2.amazonaws.com", "DescribeInstances", from("10.20.30.40", OPS_UA)));
    v.push(ev("ops-aws-internal", &d("20:07:00"), "ec2.amazonaws.com", "DescribeInstances", from("AWS Internal", OPS_UA)));
    v.push(ev(
        "newcomer",
        &d("20:20:00"),
        "ec2.amazonaws.com",
        "DescribeInstances",
        json!({"userIdentity": iam_user("newcomer"), "sourceIPAddress": "203.0.113.100"}),
    ));
    let service = json!({"type": "AWSService", "invokedBy": "config.amazonaws.com"});
    v.push(ev(
        "svc-new-source",
        &d("20:30:00"),
        "s3.amazonaws.com",
        "GetBucketAcl",
        json!({"userIdentity": service, "sourceIPAddress": "10.1.2.3", "userAgent": "config.amazonaws.com"}),
    ));

    // iam_policy_changes
    let iam = |p: Value| json!({"requestParameters": p});
    v.push(ev(
        "iam-attach-admin",
        &d("21:00:00"),
        "iam.amazonaws.com",
        "AttachUserPolicy",
        iam(json!({"userName": "mallory", "policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"})),
    ));
    v.push(ev(
        "iam-inline-star",
        &d("21:01:00"),
        "iam.amazonaws.com",
        "PutRolePolicy",
        iam(json!({"roleName": "app", "policyName": "everything",
        "policyDocument": "{\n  \"Version\": \"2012-10-17\",\n  \"Statement\": [{\"Effect\": \"Allow\", \"Action\": \"*\", \"Resource\": \"*\"}]\n}"})),
    ));
    v.push(ev(
        "iam-attach-readonly",
        &d("21:02:00"),
        "iam.amazonaws.com",
        "AttachRolePolicy",
        iam(json!({"roleName": "app", "policyArn": "arn:aws:iam::aws:policy/ReadOnlyAccess"})),
    ));
    v.push(ev(
        "iam-inline-narrow",
        &d("21:03:00"),
        "iam.amazonaws.com",
        "PutUserPolicy",
        iam(json!({"userName": "bob", "policyName": "s3read",
        "policyDocument": "{\"Statement\":[{\"Effect\":\"Allow\",\"Action\":[\"s3:GetObject\"],\"Resource\":\"*\"}]}"})),
    ));
    v.push(ev(
        "iam-trust",
        &d("21:04:00"),
        "iam.amazonaws.com",
        "UpdateAssumeRolePolicy",
        iam(json!({"roleName": "app",
        "policyDocument": "{\"Statement\":[{\"Effect\":\"Allow\",\"Principal\":{\"AWS\":\"*\"},\"Action\":\"sts:AssumeRole\"}]}"})),
    ));
    v.push(ev("iam-group-add", &d("21:05:00"), "iam.amazonaws.com", "AddUserToGroup", iam(json!({"groupName": "admins", "userName": "mallory"}))));
    v.push(ev(
        "iam-policy-version",
        &d("21:06:00"),
        "iam.amazonaws.com",
        "CreatePolicyVersion",
        iam(json!({"policyArn": format!("arn:aws:iam::{ACCT}:policy/ops"),
        "setAsDefault": true, "policyDocument": "{\"Statement\":[{\"Effect\":\"Allow\",\"Action\":[\"*\"],\"Resource\":\"*\"}]}"})),
    ));
    let mut attach_failed = iam(json!({"roleName": "app", "policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"}));
    attach_failed["errorCode"] = json!("AccessDenied");
    v.push(ev("iam-attach-failed", &d("21:07:00"), "iam.amazonaws.com", "AttachRolePolicy", attach_failed));
    v.push(ev("iam-list", &d("21:08:00"), "iam.amazonaws.com", "ListAttachedRolePolicies", iam(json!({"roleName": "app"}))));
    v
}

// ---------------------------------------------------------------------------------------------
// The lake

struct Fixture {
    lake: PathBuf,
    /// Every record in the lake (generated and hand-written), each once.
    records: Vec<Value>,
    /// The generated archive's account.
    generated_account: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build_fixture)
}

fn build_fixture() -> Fixture {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("queries-lake");
    let _ = std::fs::remove_dir_all(&dir);
    let (archive, lake) = (dir.join("archive"), dir.join("lake"));
    // Eight days, so that the generator's anomalies (new identities, a CI role from new IPs)
    // land on the last day.
    let out = std::process::Command::new(prism_bin())
        .args(["generate", "--out", archive.to_str().unwrap(), "--accounts", "1", "--regions", "us-east-1", "--days", "8"])
        .args(["--events-per-day", "1500", "--anomalies", "4", "--seed", "11", "--start", "2024-01-01"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    write_gz(&log_path(&archive, ACCT, "us-east-1", "20240201", "HandWritten00001"), &hand_records());
    let (code, summary) = run_ingest(&[archive.to_str().unwrap(), "--lake", lake.to_str().unwrap(), "--granularity", "day"]);
    assert_eq!(code, 0, "{summary}");
    // Insights too, so the queries over `insights` run on a real table.
    for args in [
        vec![
            "selectors",
            "put",
            "--lake",
            lake.to_str().unwrap(),
            "--insight-selectors",
            r#"[{"InsightType":"ApiCallRateInsight"},{"InsightType":"ApiErrorRateInsight"}]"#,
        ],
        vec!["insights", "backfill", "--lake", lake.to_str().unwrap(), "--quiet"],
    ] {
        let out = std::process::Command::new(prism_bin()).args(&args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    let mut seen = BTreeSet::new();
    let mut records = Vec::new();
    let mut accounts = BTreeSet::new();
    for path in files_under(&archive) {
        if !path.to_string_lossy().ends_with(".json.gz") {
            continue;
        }
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap()).read_to_string(&mut text).unwrap();
        let file: Value = serde_json::from_str(&text).unwrap();
        for r in file["Records"].as_array().unwrap() {
            // Delivered twice (the generator's duplicates) but stored once.
            if seen.insert(r["eventID"].as_str().unwrap().to_owned()) {
                accounts.insert(r["recipientAccountId"].as_str().unwrap().to_owned());
                records.push(r.clone());
            }
        }
    }
    assert_eq!(summary["records_written"].as_u64().unwrap() as usize, records.len());
    accounts.remove(ACCT);
    assert_eq!(accounts.len(), 1, "the generated account is not the hand-written one");
    Fixture { lake, records, generated_account: accounts.pop_first().unwrap() }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn queries_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("queries")
}

/// Fills `{start}` and `{end}` as `prism schedule` does: with `TIMESTAMP '…'` literals.
fn fill_window(sql: &str, (start, end): (&str, &str)) -> String {
    sql.replace("{start}", &format!("TIMESTAMP '{start}'")).replace("{end}", &format!("TIMESTAMP '{end}'"))
}

/// Runs a shipped query file through `prism sql -f` (with its window filled, when given) and
/// returns its rows as JSON objects without their null values.
fn run(file: &str, window: Option<(&str, &str)>) -> Vec<Value> {
    run_on(file, window, &[])
}

/// [`run`], with `prism sql` given `before` ahead of the file (`--workers`, a `-c` setting).
fn run_on(file: &str, window: Option<(&str, &str)>, before: &[&str]) -> Vec<Value> {
    let path = queries_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let sql_file = match window {
        Some(w) => {
            let filled = tmp.path().join(file);
            std::fs::write(&filled, fill_window(&text, w)).unwrap();
            filled
        }
        None => {
            assert!(!text.contains("{start}"), "{file} has a window: run it with one");
            path
        }
    };
    let out = std::process::Command::new(prism_bin())
        .args(["sql", "--lake", fixture().lake.to_str().unwrap(), "--format", "json"])
        .args(before)
        .args(["-f", sql_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.into_iter().map(without_nulls).collect()
}

fn without_nulls(row: Value) -> Value {
    match row {
        Value::Object(m) => Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    }
}

#[track_caller]
fn assert_rows(actual: &[Value], expected: Vec<Value>) {
    let expected: Vec<Value> = expected.into_iter().map(without_nulls).collect();
    if actual != expected.as_slice() {
        let show = |rows: &[Value]| rows.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n");
        panic!("rows differ\n--- actual ({})\n{}\n--- expected ({})\n{}", actual.len(), show(actual), expected.len(), show(&expected));
    }
}

fn of_account(rows: &[Value], account: &str) -> Vec<Value> {
    rows.iter().filter(|r| r["account"] == account).cloned().collect()
}

fn column(rows: &[Value], name: &str) -> Vec<String> {
    rows.iter().map(|r| r[name].as_str().unwrap_or_default().to_owned()).collect()
}

// ---------------------------------------------------------------------------------------------
// The same logic over the records, for the generated rows

fn text(r: &Value, path: &[&str]) -> Option<String> {
    path.iter().try_fold(r, |v, k| v.get(k)).and_then(Value::as_str).map(str::to_owned)
}

fn identity(r: &Value) -> Option<String> {
    text(r, &["userIdentity", "arn"]).or_else(|| text(r, &["userIdentity", "invokedBy"])).or_else(|| text(r, &["userIdentity", "principalId"]))
}

fn time(r: &Value) -> &str {
    r["eventTime"].as_str().unwrap()
}

fn in_window(r: &Value, (start, end): (&str, &str)) -> bool {
    time(r) >= start && time(r) < end
}

fn is(r: &Value, source: &str, names: &[&str]) -> bool {
    r["eventSource"] == source && names.iter().any(|n| r["eventName"] == *n)
}

fn ok(r: &Value) -> bool {
    r.get("errorCode").is_none_or(Value::is_null)
}

/// The records matching `keep`, newest first (ties by event ID), as their event IDs.
fn newest_first(records: &[Value], keep: impl Fn(&Value) -> bool) -> Vec<String> {
    let mut rows: Vec<&Value> = records.iter().filter(|r| keep(r)).collect();
    rows.sort_by(|a, b| time(b).cmp(time(a)).then_with(|| a["eventID"].as_str().cmp(&b["eventID"].as_str())));
    rows.iter().map(|r| r["eventID"].as_str().unwrap().to_owned()).collect()
}

fn by_id(records: &[Value]) -> HashMap<&str, &Value> {
    records.iter().map(|r| (r["eventID"].as_str().unwrap(), r)).collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn root_activity_lists_root_calls_in_the_window_but_not_service_calls() {
    let rows = run("root_activity.sql", Some(DAY));
    let row = |id: &str, time: &str, source: &str, name: &str, mfa: Option<&str>, key: Option<&str>, msg: Option<&str>| {
        let ua = if source == "signin.amazonaws.com" { "Mozilla/5.0 (X11; Linux x86_64)" } else { OPS_UA };
        json!({"eventtime": time, "account": ACCT, "awsregion": "us-east-1", "eventsource": source, "eventname": name,
               "sourceipaddress": "203.0.113.5", "useragent": ua, "mfa": mfa, "accesskeyid": key, "errormessage": msg, "eventid": id})
    };
    assert_rows(
        &rows,
        vec![
            row("root-console-mfa", "2024-02-01T00:00:00Z", "signin.amazonaws.com", "ConsoleLogin", Some("true"), None, None),
            row("root-access-key", "2024-02-01T10:00:00Z", "ec2.amazonaws.com", "DescribeInstances", None, Some("AKIAROOTKEY0001"), None),
            row("root-console-failed", "2024-02-01T11:00:00Z", "signin.amazonaws.com", "ConsoleLogin", Some("false"), None, Some("Failed authentication")),
            row("root-console-nomfa", "2024-02-01T12:00:00Z", "signin.amazonaws.com", "ConsoleLogin", Some("false"), None, None),
        ],
    );
    // The generated month has no root activity; the hand-written one at the window's end belongs
    // to the next window.
    assert_rows(&run("root_activity.sql", Some(("2024-01-01T00:00:00Z", DAY.0))), vec![]);
    assert_eq!(column(&run("root_activity.sql", Some((DAY.1, "2024-02-03T00:00:00Z"))), "eventid"), ["root-at-end"]);
}

#[test]
fn console_signin_without_mfa_skips_mfa_failed_and_federated_sign_ins() {
    let rows = run("console_signin_without_mfa.sql", Some(DAY));
    let row = |id: &str, time: &str, kind: &str, user: &str, ip: &str| {
        json!({"eventtime": time, "account": ACCT, "identitytype": kind, "username": user, "sourceipaddress": ip,
               "useragent": "Mozilla/5.0 (X11; Linux x86_64)", "mfaused": "No", "loginto": "https://console.aws.amazon.com/console/home", "eventid": id})
    };
    assert_rows(
        &rows,
        vec![
            row("signin-nomfa", "2024-02-01T09:00:00Z", "IAMUser", "carol", "198.51.100.30"),
            row("root-console-nomfa", "2024-02-01T12:00:00Z", "Root", "arn:aws:iam::111122223333:root", "203.0.113.5"),
        ],
    );
}

#[test]
fn failed_console_logins_group_by_user_and_ip_with_a_later_success() {
    let rows = run("failed_console_logins.sql", None);
    let row = |user: &str, ip: &str, n: u64, first: &str, last: &str, success: Option<&str>| {
        json!({"account": ACCT, "username": user, "sourceipaddress": ip, "failures": n, "first_failure": first, "last_failure": last,
               "last_success": success, "errormessage": "Failed authentication"})
    };
    assert_rows(
        &rows,
        vec![
            row("dave", "192.0.2.50", 2, "2024-02-01T08:00:00Z", "2024-02-01T08:01:00Z", Some("2024-02-01T08:05:00Z")),
            row("HIDDEN_DUE_TO_SECURITY_REASONS", "198.51.100.77", 1, "2024-02-01T09:30:00Z", "2024-02-01T09:30:00Z", None),
            row("arn:aws:iam::111122223333:root", "203.0.113.5", 1, "2024-02-01T11:00:00Z", "2024-02-01T11:00:00Z", Some("2024-02-01T12:00:00Z")),
        ],
    );
}

#[test]
fn new_access_keys_and_users_lists_successful_credential_creation() {
    let f = fixture();
    let rows = run("new_access_keys_and_users.sql", None);
    let row = |id: &str, hms: &str, name: &str, user: &str, key: Option<&str>, by: &str, other: bool| {
        json!({"eventtime": at(hms), "account": ACCT, "eventname": name, "username": user, "accesskeyid": key,
               "created_by": format!("arn:aws:iam::{ACCT}:user/{by}"), "for_another_user": other,
               "sourceipaddress": OPS_IP, "useragent": OPS_UA, "eventid": id})
    };
    assert_rows(
        &of_account(&rows, ACCT),
        vec![
            row("create-login-profile", "13:03:00", "CreateLoginProfile", "mallory", None, "ops", true),
            row("create-key-self", "13:02:00", "CreateAccessKey", "bob", Some("AKIABOB0002"), "bob", false),
            row("create-key-other", "13:01:00", "CreateAccessKey", "mallory", Some("AKIAMALLORY0001"), "ops", true),
            row("create-user", "13:00:00", "CreateUser", "mallory", None, "ops", true),
        ],
    );
    // Generated: people create users and keys for svc-user-N now and then.
    let names = ["CreateUser", "CreateAccessKey", "CreateLoginProfile", "UpdateLoginProfile"];
    let expected = newest_first(&f.records, |r| is(r, "iam.amazonaws.com", &names) && ok(r));
    assert!(expected.len() > 4, "the generator makes some: {expected:?}");
    assert_eq!(column(&rows, "eventid"), expected);
    let records = by_id(&f.records);
    for row in of_account(&rows, &f.generated_account) {
        let r = records[row["eventid"].as_str().unwrap()];
        assert_eq!(row["username"].as_str(), text(r, &["requestParameters", "userName"]).as_deref(), "{row}");
        assert_eq!(row["created_by"].as_str(), identity(r).as_deref(), "{row}");
    }
}

#[test]
fn access_denied_hot_spots_count_denials_per_identity_in_the_window() {
    let f = fixture();
    let window = ("2024-02-01T14:00:00Z", "2024-02-01T15:00:00Z");
    let rows = run("access_denied_hot_spots.sql", Some(window));
    assert_rows(
        &rows,
        vec![
            json!({"identity": format!("arn:aws:iam::{ACCT}:user/eve"), "identitytype": "IAMUser", "account": ACCT, "denials": 5, "calls": 6,
               "denied_pct": 83.3, "denied_apis": 4, "apis": "DescribeInstances GetSecretValue ListBuckets ListUsers", "source_ips": 2,
               "first_denied": "2024-02-01T14:00:00Z", "last_denied": "2024-02-01T14:04:00Z"}),
            json!({"identity": format!("arn:aws:sts::{ACCT}:assumed-role/app/grace"), "identitytype": "AssumedRole", "account": ACCT, "denials": 1,
               "calls": 1, "denied_pct": 100.0, "denied_apis": 1, "apis": "Decrypt", "source_ips": 1,
               "first_denied": "2024-02-01T14:20:00Z", "last_denied": "2024-02-01T14:20:00Z"}),
        ],
    );

    // The generated days: every identity with a denial, computed from the records.
    let day = ("2024-01-01T00:00:00Z", "2024-01-10T00:00:00Z");
    let denied = |r: &Value| {
        text(r, &["errorCode"]).is_some_and(|c| {
            c.contains("AccessDenied") || c.ends_with("UnauthorizedOperation") || c.ends_with("UnauthorizedAccess") || c == "AuthorizationError"
        })
    };
    #[derive(Default)]
    struct Agg {
        denials: u64,
        calls: u64,
        apis: BTreeSet<String>,
        names: BTreeSet<String>,
        ips: BTreeSet<String>,
        first: String,
        last: String,
        kind: Option<String>,
    }
    let mut groups: BTreeMap<(String, String), Agg> = BTreeMap::new();
    for r in f.records.iter().filter(|r| in_window(r, day)) {
        let g = groups.entry((identity(r).unwrap(), r["recipientAccountId"].as_str().unwrap().to_owned())).or_default();
        g.calls += 1;
        g.kind = text(r, &["userIdentity", "type"]);
        if denied(r) {
            g.denials += 1;
            g.apis.insert(format!("{}:{}", r["eventSource"], r["eventName"]));
            g.names.insert(r["eventName"].as_str().unwrap().to_owned());
            g.ips.insert(r["sourceIPAddress"].as_str().unwrap().to_owned());
            if g.first.is_empty() || time(r) < g.first.as_str() {
                g.first = time(r).to_owned();
            }
            g.last = g.last.clone().max(time(r).to_owned());
        }
    }
    let mut expected: Vec<(u64, String, Value)> = groups
        .into_iter()
        .filter(|(_, g)| g.denials > 0)
        .map(|((id, account), g)| {
            let pct = (1000.0 * g.denials as f64 / g.calls as f64).round() / 10.0;
            let row = json!({"identity": id, "identitytype": g.kind, "account": account, "denials": g.denials, "calls": g.calls,
                "denied_pct": pct, "denied_apis": g.apis.len(), "apis": g.names.into_iter().collect::<Vec<_>>().join(" "),
                "source_ips": g.ips.len(), "first_denied": g.first, "last_denied": g.last});
            (g.denials, id, row)
        })
        .collect();
    expected.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    assert!(!expected.is_empty(), "the generator makes AccessDenied errors");
    assert_rows(&run("access_denied_hot_spots.sql", Some(day)), expected.into_iter().map(|e| e.2).collect());
}

#[test]
fn cloudtrail_tampering_lists_attempts_including_failed_ones() {
    let rows = run("cloudtrail_tampering.sql", Some(DAY));
    let records = hand_records();
    let rp = |id: &str| records.iter().find(|r| r["eventID"] == id).unwrap()["requestParameters"].to_string();
    let row = |id: &str, hms: &str, name: &str, trail: &str, error: Option<&str>| {
        json!({"eventtime": at(hms), "account": ACCT, "awsregion": "us-east-1", "eventname": name, "trail": trail, "identity": OPS_ARN,
               "sourceipaddress": OPS_IP, "useragent": OPS_UA, "errorcode": error, "requestparameters": rp(id), "eventid": id})
    };
    assert_rows(
        &rows,
        vec![
            row("trail-stop", "16:00:00", "StopLogging", "arn:aws:cloudtrail:us-east-1:111122223333:trail/main", None),
            row("trail-delete-denied", "16:05:00", "DeleteTrail", "main", Some("AccessDenied")),
            row("trail-selectors", "16:10:00", "PutEventSelectors", "main", None),
            row("trail-update", "16:15:00", "UpdateTrail", "main", None),
        ],
    );
    // The generator's DescribeTrails and LookupEvents are not tampering.
    assert_rows(&run("cloudtrail_tampering.sql", Some(("2024-01-01T00:00:00Z", DAY.0))), vec![]);
}

#[test]
fn security_group_openings_to_the_world_in_every_request_shape() {
    let f = fixture();
    let rows = run("security_group_open_to_world.sql", Some(DAY));
    let records = hand_records();
    let rp = |id: &str| records.iter().find(|r| r["eventID"] == id).unwrap()["requestParameters"].to_string();
    let row = |id: &str, hms: &str, name: &str, group: &str, cidr: &str, proto: &str, port: Option<i64>| {
        json!({"eventtime": at(hms), "account": ACCT, "awsregion": "us-east-1", "eventname": name, "groupid": group, "open_cidr": cidr,
               "protocol": proto, "from_port": port, "to_port": port, "identity": OPS_ARN, "sourceipaddress": OPS_IP,
               "requestparameters": rp(id), "eventid": id})
    };
    assert_rows(
        &rows,
        vec![
            row("sg-world-ssh", "17:00:00", "AuthorizeSecurityGroupIngress", "sg-0aaa", "0.0.0.0/0", "tcp", Some(22)),
            row("sg-world-v6-rdp", "17:05:00", "AuthorizeSecurityGroupIngress", "sg-0bbb", "::/0", "tcp", Some(3389)),
            row("sg-legacy-flat", "17:10:00", "AuthorizeSecurityGroupIngress", "sg-0ccc", "0.0.0.0/0", "tcp", Some(5432)),
            row("sg-modify-rule", "17:15:00", "ModifySecurityGroupRules", "sg-0ddd", "0.0.0.0/0", "tcp", Some(443)),
            row("sg-all-protocols", "17:40:00", "AuthorizeSecurityGroupIngress", "sg-0999", "0.0.0.0/0", "-1", None),
        ],
    );
    // The generator's AuthorizeSecurityGroupIngress calls open SSH to 0.0.0.0/0.
    let january = ("2024-01-01T00:00:00Z", DAY.0);
    let mut expected = newest_first(&f.records, |r| in_window(r, january) && is(r, "ec2.amazonaws.com", &["AuthorizeSecurityGroupIngress"]) && ok(r));
    let rows = run("security_group_open_to_world.sql", Some(january));
    assert!(!expected.is_empty());
    let mut ids = column(&rows, "eventid");
    expected.sort();
    ids.sort();
    assert_eq!(ids, expected);
    for row in &rows {
        assert_eq!((&row["open_cidr"], &row["from_port"], &row["protocol"]), (&json!("0.0.0.0/0"), &json!(22), &json!("tcp")), "{row}");
    }
}

#[test]
fn top_write_apis_per_day_ranks_ten_writes_a_day() {
    let f = fixture();
    let rows = run("top_write_apis_per_day.sql", None);
    // 21 January is hand-written: WriteApiNN is called NN times.
    let row = |rank: u64, source: &str, i: u64, errors: u64, identities: u64| {
        json!({"day": "2024-01-21T00:00:00Z", "rank": rank, "eventsource": source, "eventname": format!("WriteApi{i:02}"),
               "calls": i, "errors": errors, "identities": identities})
    };
    let ec2 = "ec2.amazonaws.com";
    assert_rows(
        &rows.iter().filter(|r| r["day"] == "2024-01-21T00:00:00Z").cloned().collect::<Vec<_>>(),
        vec![
            row(1, ec2, 11, 0, 1),
            row(2, ec2, 10, 2, 2),
            row(3, ec2, 9, 0, 1),
            row(4, ec2, 8, 0, 1),
            row(5, ec2, 7, 0, 1),
            row(6, ec2, 6, 0, 1),
            row(7, "autoscaling.amazonaws.com", 5, 0, 1),
            row(8, ec2, 5, 0, 1),
            row(9, ec2, 4, 0, 1),
            row(10, ec2, 3, 0, 1),
        ],
    );

    // Every day, from the records: per (day, source, name), calls, errors and callers.
    #[derive(Default)]
    struct Api {
        calls: u64,
        errors: u64,
        identities: BTreeSet<String>,
    }
    let mut by_day: BTreeMap<String, BTreeMap<(String, String), Api>> = BTreeMap::new();
    for r in f.records.iter().filter(|r| r["readOnly"] == false) {
        let day = format!("{}T00:00:00Z", &time(r)[..10]);
        let api = (r["eventSource"].as_str().unwrap().to_owned(), r["eventName"].as_str().unwrap().to_owned());
        let g = by_day.entry(day).or_default().entry(api).or_default();
        g.calls += 1;
        g.errors += u64::from(!ok(r));
        g.identities.extend(identity(r));
    }
    let mut expected = Vec::new();
    for (day, apis) in by_day.into_iter().rev() {
        let mut apis: Vec<_> = apis.into_iter().collect();
        apis.sort_by(|(a, x), (b, y)| y.calls.cmp(&x.calls).then_with(|| a.cmp(b)));
        for (rank, ((source, name), g)) in apis.into_iter().take(10).enumerate() {
            expected.push(json!({"day": day, "rank": rank + 1, "eventsource": source, "eventname": name, "calls": g.calls,
                                 "errors": g.errors, "identities": g.identities.len()}));
        }
    }
    assert!(expected.len() > 80, "eight generated days of ten writes");
    assert_rows(&rows, expected);
}

#[test]
fn iam_policy_changes_flag_admin_grants() {
    let f = fixture();
    let rows = run("iam_policy_changes.sql", None);
    let row = |id: &str, hms: &str, name: &str, target: &str, policy: Option<&str>, admin: bool| {
        json!({"eventtime": at(hms), "account": ACCT, "eventname": name, "target": target, "policy": policy, "grants_admin": admin,
               "changed_by": OPS_ARN, "sourceipaddress": OPS_IP, "eventid": id})
    };
    let ops_policy = format!("arn:aws:iam::{ACCT}:policy/ops");
    assert_rows(
        &of_account(&rows, ACCT),
        vec![
            row("iam-policy-version", "21:06:00", "CreatePolicyVersion", &ops_policy, Some(&ops_policy), true),
            row("iam-group-add", "21:05:00", "AddUserToGroup", "mallory", None, false),
            row("iam-trust", "21:04:00", "UpdateAssumeRolePolicy", "app", None, false),
            row("iam-inline-narrow", "21:03:00", "PutUserPolicy", "bob", Some("s3read"), false),
            row("iam-attach-readonly", "21:02:00", "AttachRolePolicy", "app", Some("arn:aws:iam::aws:policy/ReadOnlyAccess"), false),
            row("iam-inline-star", "21:01:00", "PutRolePolicy", "app", Some("everything"), true),
            row("iam-attach-admin", "21:00:00", "AttachUserPolicy", "mallory", Some("arn:aws:iam::aws:policy/AdministratorAccess"), true),
        ],
    );
    // Generated: AttachRolePolicy and PutRolePolicy on role-N, never admin.
    let generated = of_account(&rows, &f.generated_account);
    let expected = newest_first(&f.records, |r| {
        r["recipientAccountId"] == f.generated_account.as_str() && is(r, "iam.amazonaws.com", &["AttachRolePolicy", "PutRolePolicy"]) && ok(r)
    });
    assert!(!expected.is_empty());
    let mut ids = column(&generated, "eventid");
    let mut sorted = expected;
    ids.sort();
    sorted.sort();
    assert_eq!(ids, sorted);
    assert!(generated.iter().all(|r| r["grants_admin"] == false && r["target"].as_str().unwrap().starts_with("role-")));
}

#[test]
fn kms_key_deletion_shows_what_was_undone() {
    let rows = run("kms_key_deletion.sql", None);
    let row = |id: &str, hms: &str, name: &str, key: &str, days: Option<u64>, date: Option<&str>, undone: Option<&str>| {
        json!({"eventtime": at(hms), "account": ACCT, "awsregion": "us-east-1", "eventname": name, "keyid": key, "pending_days": days,
               "deletion_date": date, "undone_at": undone.map(at), "identity": OPS_ARN, "sourceipaddress": OPS_IP, "eventid": id})
    };
    // The generator's Decrypt and GenerateDataKey calls are not listed.
    assert_rows(
        &rows,
        vec![
            row("kms-disable-c", "18:20:00", "DisableKey", "cccccccc-1111-2222-3333-444444444444", None, None, Some("18:40:00")),
            row("kms-schedule-b", "18:10:00", "ScheduleKeyDeletion", "bbbbbbbb-1111-2222-3333-444444444444", Some(30), Some("Mar 2, 2024, 6:10:00 PM"), None),
            row(
                "kms-schedule-a",
                "18:00:00",
                "ScheduleKeyDeletion",
                "aaaaaaaa-1111-2222-3333-444444444444",
                Some(7),
                Some("Feb 8, 2024, 6:00:00 PM"),
                Some("18:30:00"),
            ),
        ],
    );
}

#[test]
fn s3_bucket_exposure_flags_changes_that_may_make_data_public() {
    let f = fixture();
    let rows = run("s3_bucket_exposure.sql", None);
    let row = |id: &str, hms: &str, bucket: Option<&str>, name: &str, public: bool| {
        json!({"eventtime": at(hms), "account": ACCT, "bucket": bucket, "eventname": name, "may_be_public": public,
               "changed_by": OPS_ARN, "sourceipaddress": OPS_IP, "eventid": id})
    };
    assert_rows(
        &of_account(&rows, ACCT),
        vec![
            row("s3-account-pab", "19:08:00", None, "PutAccountPublicAccessBlock", false),
            row("s3-pab-delete", "19:07:00", Some("data"), "DeleteBucketPublicAccessBlock", true),
            row("s3-pab-on", "19:06:00", Some("data"), "PutBucketPublicAccessBlock", false),
            row("s3-pab-off", "19:05:00", Some("data"), "PutBucketPublicAccessBlock", true),
            row("s3-acl-private", "19:04:00", Some("logs"), "PutBucketAcl", false),
            row("s3-acl-allusers", "19:03:00", Some("logs"), "PutBucketAcl", true),
            row("s3-policy-aws-star", "19:02:00", Some("shared"), "PutBucketPolicy", true),
            row("s3-policy-account", "19:01:00", Some("shared"), "PutBucketPolicy", false),
            row("s3-policy-public", "19:00:00", Some("public-site"), "PutBucketPolicy", true),
        ],
    );
    // Generated PutBucketPolicy calls name a bucket and no principal.
    let generated = of_account(&rows, &f.generated_account);
    let expected =
        newest_first(&f.records, |r| r["recipientAccountId"] == f.generated_account.as_str() && is(r, "s3.amazonaws.com", &["PutBucketPolicy"]) && ok(r));
    assert!(!expected.is_empty());
    assert_eq!(column(&generated, "eventid"), expected);
    assert!(generated.iter().all(|r| r["may_be_public"] == false && r["bucket"].as_str().unwrap().starts_with("data-bucket-")));
}

#[test]
fn new_ips_and_user_agents_of_known_identities() {
    let f = fixture();
    let rows = run("new_ips_and_user_agents.sql", Some(DAY));
    let ops = |kind: &str, value: &str| json!({"identity": OPS_ARN, "kind": kind, "value": value, "first_seen": at("20:00:00"), "calls": 2, "apis": "GetCallerIdentity ListUsers"});
    // The deployer role's new session from its usual IP is not new; its session from another
    // IP is. A private address and "AWS Internal" are not new IPs; `newcomer` has no history,
    // and AWS services are left out.
    assert_rows(
        &rows,
        vec![
            json!({"identity": format!("arn:aws:iam::{ACCT}:role/deployer"), "kind": "sourceipaddress", "value": "198.51.100.21",
               "first_seen": at("20:15:00"), "calls": 1, "apis": "UpdateStack"}),
            ops("sourceipaddress", "203.0.113.99"),
            ops("useragent", "python-requests/2.31.0"),
        ],
    );

    // The generated archive's last day, which holds its anomalies, from the records.
    let day = ("2024-01-08T00:00:00Z", "2024-01-09T00:00:00Z");
    let key = |r: &Value| {
        text(r, &["userIdentity", "sessionContext", "sessionIssuer", "arn"])
            .or_else(|| text(r, &["userIdentity", "arn"]))
            .or_else(|| text(r, &["userIdentity", "principalId"]))
    };
    let calls: Vec<&Value> = f.records.iter().filter(|r| time(r) < day.1 && text(r, &["userIdentity", "type"]).as_deref() != Some("AWSService")).collect();
    let known: BTreeSet<Option<String>> = calls.iter().filter(|r| time(r) < day.0).map(|r| key(r)).collect();
    /// A (identity, kind, value) pair's first sighting, calls and APIs.
    struct Seen {
        first: String,
        calls: u64,
        apis: BTreeSet<String>,
    }
    let mut firsts: BTreeMap<(Option<String>, &str, String), Seen> = BTreeMap::new();
    for r in &calls {
        for (kind, field) in [("sourceipaddress", "sourceIPAddress"), ("useragent", "userAgent")] {
            let Some(value) = text(r, &[field]) else { continue };
            let public_ip = match value.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(ip)) => !ip.is_private(),
                Ok(std::net::IpAddr::V6(_)) => true,
                Err(_) => false,
            };
            if kind == "sourceipaddress" && !public_ip {
                continue;
            }
            let e = firsts.entry((key(r), kind, value)).or_insert_with(|| Seen { first: time(r).to_owned(), calls: 0, apis: BTreeSet::new() });
            e.first = e.first.clone().min(time(r).to_owned());
            e.calls += 1;
            e.apis.insert(r["eventName"].as_str().unwrap().to_owned());
        }
    }
    // Ordered as the query orders: identity, kind, first sighting, value.
    let mut expected: Vec<Value> = firsts
        .into_iter()
        .filter(|((id, _, _), seen)| seen.first.as_str() >= day.0 && id.is_some() && known.contains(id))
        .map(|((id, kind, value), seen)| {
            json!({"identity": id, "kind": kind, "value": value, "first_seen": seen.first, "calls": seen.calls,
                   "apis": seen.apis.into_iter().collect::<Vec<_>>().join(" ")})
        })
        .collect();
    let order = |r: &Value| ["identity", "kind", "first_seen", "value"].map(|c| r[c].as_str().unwrap_or_default().to_owned());
    expected.sort_by_key(order);
    let rows = run("new_ips_and_user_agents.sql", Some(day));
    assert!(rows.iter().any(|r| r["value"].as_str().unwrap().starts_with("185.220.101.")), "the generator's intruder IPs are found: {rows:?}");
    assert_rows(&rows, expected);
}

/// Every `.sql` file in queries/ has a header the scheduler accepts, parses, plans and runs
/// against the lake (with its window filled when it has one), and is listed in the README. A
/// new query cannot ship broken.
#[test]
fn every_shipped_query_runs() {
    let readme = std::fs::read_to_string(queries_dir().join("README.md")).unwrap();
    let mut files: Vec<String> =
        std::fs::read_dir(queries_dir()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".sql")).collect();
    files.sort();
    assert!(files.len() >= 11, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(queries_dir().join(file)).unwrap();
        let header: Vec<&str> = text.lines().take_while(|l| l.trim().is_empty() || l.trim_start().starts_with("--")).collect();
        let keys: BTreeMap<&str, &str> = header
            .iter()
            .filter_map(|l| l.trim_start().strip_prefix("--")?.trim_start().split_once(':'))
            .filter(|(k, _)| k.starts_with(|c: char| c.is_ascii_lowercase()) && k.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map(|(k, v)| (k, v.trim()))
            .collect();
        for key in keys.keys() {
            assert!(["name", "schedule", "output", "window", "delay", "description"].contains(key), "{file}: `{key}:` is not a header key");
        }
        assert_eq!(keys.get("name").copied(), Some(file.trim_end_matches(".sql")), "{file}: `-- name:` is the file name");
        let prose = header.iter().filter(|l| l.trim_start().trim_start_matches('-').trim().len() > 20).count();
        assert!(prose >= 3, "{file}: the header says what the query finds and how to read it");
        let windowed = text.contains("{start}") || text.contains("{end}");
        assert_eq!(windowed, keys.contains_key("window"), "{file}: `{{start}}`/`{{end}}` go with a `-- window:` line");
        assert!(readme.contains(&format!("`{file}`")), "{file} is listed in queries/README.md");
        run(file, windowed.then_some(("2024-01-01T00:00:00Z", "2024-03-01T00:00:00Z")));
    }
}

#[test]
fn windowed_queries_run_by_hand_as_the_readme_shows() {
    let readme = std::fs::read_to_string(queries_dir().join("README.md")).unwrap();
    let shown = readme.lines().find(|l| l.starts_with("prism sql --lake ./lake -f queries/root_activity.sql --start")).expect("the README shows --start/--end");
    let args: Vec<String> = shown.split_whitespace().skip(1).map(|w| w.replace("./lake", &fixture().lake.to_string_lossy())).collect();
    let (start, end) = (&args[args.len() - 3], &args[args.len() - 1]);
    let args: Vec<&str> = args[..args.len() - 4].iter().map(String::as_str).chain(["--start", DAY.0, "--end", DAY.1, "--format", "csv"]).collect();
    assert!(start.ends_with('Z') && end.ends_with('Z'), "{shown}");
    let out = std::process::Command::new(prism_bin()).args(&args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csv = String::from_utf8(out.stdout).unwrap();
    let ids: Vec<&str> = csv.lines().skip(1).map(|l| l.rsplit(',').next().unwrap()).collect();
    assert_eq!(ids, ["root-console-mfa", "root-access-key", "root-console-failed", "root-console-nomfa"]);
}

/// Every shipped query gives the same rows on two `prism worker` processes as on one machine,
/// with plans split whatever the lake's size (a fragment per 4 KB of files).
#[cfg(feature = "distributed")]
#[test]
fn every_shipped_query_gives_the_same_rows_on_two_workers() {
    let workers = [WorkerProcess::start(), WorkerProcess::start()];
    let list = workers.iter().map(|w| w.url.as_str()).collect::<Vec<_>>().join(",");
    let before = ["--workers", list.as_str(), "-c", "SET distributed.file_scan_config_bytes_per_partition = 4096"];
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(queries_dir()).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "sql")).collect();
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    // The plans do run on the workers: stages of tasks, the leaves reading the lake there.
    let out = std::process::Command::new(prism_bin())
        .args(["sql", "--lake", fixture().lake.to_str().unwrap(), "--format", "csv"])
        .args(before)
        .args(["-c", "EXPLAIN ANALYZE SELECT eventname, count(DISTINCT eventid) FROM events GROUP BY 1"])
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(plan.contains("Stage 1 ── tasks=2") && plan.contains("DistributedLeafExec"), "{plan}");
    for path in files {
        let file = path.file_name().unwrap().to_str().unwrap();
        let window = std::fs::read_to_string(&path).unwrap().contains("{start}").then_some(DAY);
        let sorted = |mut rows: Vec<Value>| {
            rows.sort_by_key(|r| r.to_string());
            rows
        };
        assert_eq!(sorted(run_on(file, window, &before)), sorted(run(file, window)), "{file}");
    }
    // A worker that is down: one clear error naming it.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let down = format!("{},http://{gone}", workers[0].url);
    let out = std::process::Command::new(prism_bin())
        .args(["sql", "--lake", fixture().lake.to_str().unwrap(), "--workers", &down])
        .args(["-c", "SET distributed.file_scan_config_bytes_per_partition = 4096", "-c", "SELECT count(DISTINCT eventid) FROM events"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("worker on 'http://{gone}/'")) && stderr.lines().count() <= 3, "{stderr}");
}
