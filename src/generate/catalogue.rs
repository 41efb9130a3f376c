//! What a synthetic account does: the APIs it calls (with their share of traffic, read/write
//! kind and usual errors), who calls them and with which client.

/// One API of the catalogue.
#[derive(Debug, Clone, Copy)]
pub struct Api {
    pub source: &'static str,
    pub name: &'static str,
    pub read_only: bool,
    /// Relative share of the account's traffic.
    pub weight: f64,
    /// Share of calls that fail, and with which code.
    pub error_rate: f64,
    pub error_code: &'static str,
    /// Who usually calls it.
    pub caller: Caller,
    /// A data event (S3 objects, Lambda invokes, DynamoDB items): its own rhythm, resources
    /// and record fields.
    pub data: bool,
}

/// The kind of principal that usually makes a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// People at the console or CLI.
    Human,
    /// Applications and agents on instances (assumed roles).
    App,
    /// CI/CD and infrastructure as code.
    Automation,
    /// AWS services acting for the account.
    Service,
}

const fn api(source: &'static str, name: &'static str, read_only: bool, weight: f64, error_rate: f64, error_code: &'static str, caller: Caller) -> Api {
    Api { source, name, read_only, weight, error_rate, error_code, caller, data: false }
}

const fn data_api(source: &'static str, name: &'static str, read_only: bool, weight: f64, error_rate: f64, error_code: &'static str, caller: Caller) -> Api {
    Api { source, name, read_only, weight, error_rate, error_code, caller, data: true }
}

use Caller::*;

/// Mostly Describe/List/Get, as real accounts are; a few busy write APIs (agents, logs) and
/// rare sensitive ones.
pub const APIS: &[Api] = &[
    api("ec2.amazonaws.com", "DescribeInstances", true, 12.0, 0.004, "Client.RequestLimitExceeded", App),
    api("ec2.amazonaws.com", "DescribeSecurityGroups", true, 5.0, 0.002, "Client.UnauthorizedOperation", Human),
    api("ec2.amazonaws.com", "DescribeVolumes", true, 4.0, 0.002, "Client.RequestLimitExceeded", Service),
    api("ec2.amazonaws.com", "DescribeSubnets", true, 3.0, 0.001, "Client.UnauthorizedOperation", Automation),
    api("ec2.amazonaws.com", "RunInstances", false, 0.3, 0.02, "Client.InsufficientInstanceCapacity", Automation),
    api("ec2.amazonaws.com", "TerminateInstances", false, 0.2, 0.01, "Client.UnauthorizedOperation", Automation),
    api("ec2.amazonaws.com", "CreateTags", false, 1.5, 0.005, "Client.InvalidID", Service),
    api("ec2.amazonaws.com", "AuthorizeSecurityGroupIngress", false, 0.05, 0.05, "Client.InvalidPermission.Duplicate", Human),
    api("ec2.amazonaws.com", "CreateSnapshot", false, 0.2, 0.01, "Client.SnapshotCreationPerVolumeRateExceeded", Automation),
    api("s3.amazonaws.com", "ListBuckets", true, 3.0, 0.001, "AccessDenied", Human),
    api("s3.amazonaws.com", "GetBucketAcl", true, 4.0, 0.01, "AccessDenied", Service),
    api("s3.amazonaws.com", "GetBucketPolicy", true, 2.0, 0.05, "NoSuchBucketPolicy", Service),
    api("s3.amazonaws.com", "PutBucketPolicy", false, 0.05, 0.02, "MalformedPolicy", Human),
    api("s3.amazonaws.com", "CreateBucket", false, 0.02, 0.05, "BucketAlreadyOwnedByYou", Automation),
    api("iam.amazonaws.com", "GetUser", true, 2.0, 0.02, "NoSuchEntity", Human),
    api("iam.amazonaws.com", "ListRoles", true, 2.0, 0.002, "AccessDenied", Automation),
    api("iam.amazonaws.com", "GetRole", true, 3.0, 0.01, "NoSuchEntity", Automation),
    api("iam.amazonaws.com", "ListAttachedRolePolicies", true, 2.0, 0.002, "AccessDenied", Automation),
    api("iam.amazonaws.com", "CreateAccessKey", false, 0.02, 0.05, "LimitExceeded", Human),
    api("iam.amazonaws.com", "CreateUser", false, 0.01, 0.02, "EntityAlreadyExists", Human),
    api("iam.amazonaws.com", "AttachRolePolicy", false, 0.05, 0.01, "NoSuchEntity", Automation),
    api("iam.amazonaws.com", "PutRolePolicy", false, 0.05, 0.01, "MalformedPolicyDocument", Automation),
    api("sts.amazonaws.com", "GetCallerIdentity", true, 6.0, 0.0, "", Automation),
    api("sts.amazonaws.com", "AssumeRole", true, 8.0, 0.003, "AccessDenied", App),
    api("kms.amazonaws.com", "Decrypt", true, 8.0, 0.003, "AccessDeniedException", App),
    api("kms.amazonaws.com", "GenerateDataKey", true, 5.0, 0.002, "ThrottlingException", App),
    api("lambda.amazonaws.com", "ListFunctions20150331", true, 2.0, 0.002, "AccessDeniedException", Human),
    api("lambda.amazonaws.com", "UpdateFunctionCode20150331v2", false, 0.1, 0.02, "ResourceConflictException", Automation),
    api("cloudtrail.amazonaws.com", "DescribeTrails", true, 1.0, 0.001, "AccessDenied", Service),
    api("cloudtrail.amazonaws.com", "LookupEvents", true, 1.0, 0.01, "ThrottlingException", Human),
    api("ssm.amazonaws.com", "GetParameter", true, 6.0, 0.01, "ParameterNotFound", App),
    api("ssm.amazonaws.com", "PutParameter", false, 0.3, 0.01, "ParameterAlreadyExists", Automation),
    api("ssm.amazonaws.com", "UpdateInstanceInformation", false, 4.0, 0.002, "ThrottlingException", App),
    api("logs.amazonaws.com", "CreateLogStream", false, 3.0, 0.01, "ResourceAlreadyExistsException", Service),
    api("autoscaling.amazonaws.com", "DescribeAutoScalingGroups", true, 3.0, 0.002, "Throttling", Service),
    api("rds.amazonaws.com", "DescribeDBInstances", true, 2.0, 0.002, "AccessDenied", Automation),
    api("dynamodb.amazonaws.com", "DescribeTable", true, 2.0, 0.005, "ResourceNotFoundException", App),
    api("secretsmanager.amazonaws.com", "GetSecretValue", true, 2.0, 0.005, "AccessDeniedException", App),
    api("ecr.amazonaws.com", "GetAuthorizationToken", true, 2.0, 0.001, "AccessDeniedException", Automation),
];

/// Data events (`--data-events-per-day`): what applications do with objects, functions and
/// items, far busier than management calls. KMS `Decrypt` stays a management event, as AWS
/// logs it.
pub const DATA_APIS: &[Api] = &[
    data_api("s3.amazonaws.com", "GetObject", true, 40.0, 0.004, "NoSuchKey", App),
    data_api("s3.amazonaws.com", "HeadObject", true, 12.0, 0.01, "NoSuchKey", App),
    data_api("s3.amazonaws.com", "PutObject", false, 15.0, 0.002, "SlowDown", App),
    data_api("s3.amazonaws.com", "DeleteObject", false, 2.0, 0.001, "AccessDenied", Automation),
    data_api("lambda.amazonaws.com", "Invoke", false, 20.0, 0.003, "TooManyRequestsException", App),
    data_api("dynamodb.amazonaws.com", "GetItem", true, 25.0, 0.001, "ProvisionedThroughputExceededException", App),
    data_api("dynamodb.amazonaws.com", "PutItem", false, 10.0, 0.002, "ConditionalCheckFailedException", App),
    data_api("dynamodb.amazonaws.com", "Query", true, 12.0, 0.001, "ProvisionedThroughputExceededException", App),
];

/// The buckets of an account's S3 data events (`<account>-<name>`), with their share of calls.
pub const BUCKETS: &[(&str, f64)] = &[("app-data", 0.5), ("reports", 0.2), ("logs", 0.2), ("backups", 0.1)];

/// A job that runs at the same minute every day (or hour), calling one API in a burst. These
/// are normal traffic that a good detector must not flag.
#[derive(Debug, Clone, Copy)]
pub struct ScheduledJob {
    pub source: &'static str,
    pub name: &'static str,
    /// Minute of the day it starts, or of the hour when `hourly`.
    pub minute: u32,
    pub hourly: bool,
    /// Calls per run.
    pub calls: u32,
}

pub const SCHEDULED_JOBS: &[ScheduledJob] = &[
    ScheduledJob { source: "ec2.amazonaws.com", name: "CreateSnapshot", minute: 2 * 60 + 5, hourly: false, calls: 40 },
    ScheduledJob { source: "lambda.amazonaws.com", name: "UpdateFunctionCode20150331v2", minute: 23 * 60 + 30, hourly: false, calls: 25 },
    ScheduledJob { source: "ssm.amazonaws.com", name: "PutParameter", minute: 15, hourly: true, calls: 12 },
];

/// User agents by caller kind.
pub fn user_agents(caller: Caller) -> &'static [&'static str] {
    match caller {
        Human => &[
            "console.amazonaws.com",
            "aws-cli/2.15.30 Python/3.11.8 Linux/6.5.0 exe/x86_64.ubuntu.22 prompt/off command/ec2.describe-instances",
            "AWS Internal",
        ],
        App => &[
            "Boto3/1.34.69 md/Botocore#1.34.69 ua/2.0 os/linux#6.1.0 md/arch#x86_64 lang/python#3.11.8",
            "aws-sdk-go-v2/1.26.1 os/linux lang/go#1.22.1 md/GOOS#linux md/GOARCH#amd64",
            "amazon-ssm-agent/3.3.40.0",
        ],
        Automation => &[
            "APN/1.0 HashiCorp/1.0 Terraform/1.7.5 (+https://www.terraform.io) terraform-provider-aws/5.42.0",
            "aws-cli/2.15.30 Python/3.11.8 Linux/6.5.0 exe/x86_64.ubuntu.22 command/cloudformation.deploy",
            "aws-sdk-js/3.540.0",
        ],
        Service => &["autoscaling.amazonaws.com", "cloudformation.amazonaws.com", "config.amazonaws.com"],
    }
}
