-- name: s3_bucket_exposure
--
-- Changes to who may read S3 buckets, over the whole lake: bucket policies and ACLs written or
-- deleted, and Block Public Access settings changed or removed (per bucket and account-wide).
-- Public buckets are the classic cloud data leak.
-- Reading the result: one row per successful change, newest first. `bucket` is empty for
-- account-wide settings. `may_be_public` is true when the change can expose data: a policy
-- with Principal "*", an ACL granting AllUsers or AuthenticatedUsers (or a public canned ACL),
-- a Block Public Access setting turned off, or Block Public Access removed. Rows with
-- `may_be_public` true need a look; the others are the history of the bucket's access rules.
-- Add `AND eventtime >= TIMESTAMP '2024-06-01T00:00:00Z'` to the WHERE clause to look at a
-- shorter period.
SELECT eventtime,
       recipientaccountid AS account,
       json_get_str(requestparameters, 'bucketName') AS bucket,
       eventname,
       CASE
           WHEN eventname IN ('DeleteBucketPublicAccessBlock', 'DeleteAccountPublicAccessBlock') THEN true
           WHEN eventname = 'PutBucketPolicy'
               THEN regexp_like(requestparameters, '"Principal"\s*:\s*(\{\s*"AWS"\s*:\s*)?(\[\s*)?"\*"')
           WHEN eventname = 'PutBucketAcl'
               THEN regexp_like(requestparameters, 'acs\.amazonaws\.com/groups/global/(AllUsers|AuthenticatedUsers)|public-read|authenticated-read')
           WHEN eventname IN ('PutBucketPublicAccessBlock', 'PutAccountPublicAccessBlock')
               THEN regexp_like(requestparameters, '"(BlockPublicAcls|IgnorePublicAcls|BlockPublicPolicy|RestrictPublicBuckets)"\s*:\s*false')
           ELSE false
       END AS may_be_public,
       COALESCE(useridentity['arn'], useridentity['invokedby'], useridentity['principalid']) AS changed_by,
       sourceipaddress,
       eventid
FROM events
WHERE eventsource = 's3.amazonaws.com'
  AND eventname IN ('PutBucketPolicy', 'DeleteBucketPolicy', 'PutBucketAcl',
                    'PutBucketPublicAccessBlock', 'DeleteBucketPublicAccessBlock',
                    'PutAccountPublicAccessBlock', 'DeleteAccountPublicAccessBlock')
  AND errorcode IS NULL
ORDER BY eventtime DESC, eventid;
