use arrow::array::{Array, AsArray, BooleanArray, ListArray, StructArray, TimestampMicrosecondArray};

use super::*;

const FULL: &str = r#"{
  "eventVersion": "1.09",
  "userIdentity": {"type": "AssumedRole", "principalId": "AROA:me", "arn": "arn:aws:sts::111122223333:assumed-role/Admin/me",
    "accountId": "111122223333", "accessKeyId": "ASIA1",
    "sessionContext": {"sessionIssuer": {"type": "Role", "principalId": "AROA", "arn": "arn:aws:iam::111122223333:role/Admin", "accountId": "111122223333", "userName": "Admin"},
      "webIdFederationData": {}, "attributes": {"creationDate": "2024-01-01T00:00:00Z", "mfaAuthenticated": "false"}, "ec2RoleDelivery": "2.0"},
    "newIdentityField": [1, 2]},
  "eventTime": "2024-06-01T12:34:56Z",
  "eventSource": "iam.amazonaws.com",
  "eventName": "CreateAccessKey",
  "awsRegion": "us-east-1",
  "sourceIPAddress": "203.0.113.7",
  "userAgent": "aws-cli/2.15.0",
  "errorCode": "AccessDenied",
  "errorMessage": "no",
  "requestParameters": {"userName": "bob", "nested": {"a": [1, "x"]}},
  "responseElements": null,
  "requestID": "r-1",
  "eventID": "e-1",
  "readOnly": "True",
  "managementEvent": true,
  "resources": [{"ARN": "arn:aws:iam::111122223333:user/bob", "accountId": "111122223333", "type": "AWS::IAM::User", "extra": 1}],
  "eventType": "AwsApiCall",
  "recipientAccountId": "111122223333",
  "eventCategory": "Management",
  "tlsDetails": {"tlsVersion": "TLSv1.3", "cipherSuite": "TLS_AES_128_GCM_SHA256", "clientProvidedHostHeader": "iam.amazonaws.com"},
  "sessionCredentialFromConsole": true,
  "brandNewTopLevel": {"k": "v"}
}"#;

fn build(records: &[&str]) -> RecordBatch {
    let mut b = EventBatchBuilder::new(Granularity::Minute);
    for r in records {
        let mut ev = parse_record(r.as_bytes()).unwrap();
        let c = check_record(&ev, r.as_bytes()).unwrap();
        b.append(&mut ev, c, "s3://bucket/key.json.gz");
    }
    b.finish()
}

#[test]
fn batch_has_the_documented_schema() {
    let batch = build(&[FULL]);
    assert_eq!(batch.schema(), events_schema());
    for name in [
        "eventtime",
        "eventsource",
        "eventname",
        "awsregion",
        "useridentity",
        "errorcode",
        "readonly",
        "managementevent",
        "requestparameters",
        "resources",
        "sourcefile",
        "eventperiod",
        "additionalfields",
    ] {
        assert!(batch.schema().field_with_name(name).is_ok(), "missing column {name}");
    }
}

#[test]
fn values_round_trip_into_columns() {
    let batch = build(&[FULL]);
    let s = |name: &str| batch.column_by_name(name).unwrap().as_string::<i32>().value(0).to_owned();
    assert_eq!(s("eventname"), "CreateAccessKey");
    assert_eq!(s("awsregion"), "us-east-1");
    assert_eq!(s("eventperiod"), "20240601T1234Z");
    assert_eq!(s("sourcefile"), "s3://bucket/key.json.gz");
    assert_eq!(s("eventid"), "e-1");
    let req: serde_json::Value = serde_json::from_str(&s("requestparameters")).unwrap();
    assert_eq!(req, serde_json::json!({"userName": "bob", "nested": {"a": [1, "x"]}}));
    assert!(batch.column_by_name("responseelements").unwrap().is_null(0), "JSON null is SQL NULL");
    assert_eq!(s("sessioncredentialfromconsole"), "true");

    let time = batch.column_by_name("eventtime").unwrap().as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
    assert_eq!(time.value(0), parse_event_time("2024-06-01T12:34:56Z").unwrap());
    assert_eq!(time.timezone(), Some("UTC"));

    let ro = batch.column_by_name("readonly").unwrap().as_any().downcast_ref::<BooleanArray>().unwrap();
    assert!(ro.value(0), "\"True\" is coerced to true");

    let ui = batch.column_by_name("useridentity").unwrap().as_any().downcast_ref::<StructArray>().unwrap();
    assert_eq!(ui.column_by_name("arn").unwrap().as_string::<i32>().value(0), "arn:aws:sts::111122223333:assumed-role/Admin/me");
    let sc = ui.column_by_name("sessioncontext").unwrap().as_struct();
    let issuer = sc.column_by_name("sessionissuer").unwrap().as_struct();
    assert_eq!(issuer.column_by_name("username").unwrap().as_string::<i32>().value(0), "Admin");
    let attrs = sc.column_by_name("attributes").unwrap().as_struct();
    assert_eq!(attrs.column_by_name("mfaauthenticated").unwrap().as_string::<i32>().value(0), "false");
    assert!(ui.column_by_name("onbehalfof").unwrap().is_null(0));

    let res = batch.column_by_name("resources").unwrap().as_any().downcast_ref::<ListArray>().unwrap();
    let items = res.value(0);
    let items = items.as_struct();
    assert_eq!(items.len(), 1);
    assert_eq!(items.column_by_name("type").unwrap().as_string::<i32>().value(0), "AWS::IAM::User");
}

#[test]
fn unknown_fields_are_kept_by_path() {
    let batch = build(&[FULL]);
    let extra = batch.column_by_name(ADDITIONAL_FIELDS).unwrap().as_string::<i32>().value(0);
    let v: serde_json::Value = serde_json::from_str(extra).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "brandNewTopLevel": {"k": "v"},
            "userIdentity.newIdentityField": [1, 2],
            "resources[0].extra": 1
        })
    );
    let plain = build(&[r#"{"eventTime":"2024-06-01T00:00:00Z","awsRegion":"eu-west-1","eventID":"x"}"#]);
    assert!(plain.column_by_name(ADDITIONAL_FIELDS).unwrap().is_null(0));
}

#[test]
fn zoneless_event_times_are_kept_as_utc_and_marked() {
    let check = |t: &str| {
        let r = format!(r#"{{"eventTime":"{t}","awsRegion":"us-east-1","eventID":"x"}}"#);
        let ev = parse_record(r.as_bytes()).unwrap();
        let c = check_record(&ev, r.as_bytes()).unwrap();
        (c.time_micros, c.zoneless_time)
    };
    let utc = parse_event_time("2024-06-01T12:34:56Z").unwrap();
    assert_eq!(check("2024-06-01T12:34:56Z"), (utc, false));
    assert_eq!(check("2024-06-01 12:34:56Z"), (utc, false));
    assert_eq!(check("2024-06-01 12:34:56"), (utc, true));
    assert_eq!(check("2024-06-01 12:34:56.000000000"), (utc, true));
    assert_eq!(check("2024-06-01T12:34:56"), (utc, true));
}

#[test]
fn rejections_name_the_reason() {
    let reason = |r: &str| parse_record(r.as_bytes()).and_then(|ev| check_record(&ev, r.as_bytes())).unwrap_err();
    assert_eq!(reason(r#"{"awsRegion":"us-east-1"}"#).reason, RecordRejection::MissingEventTime);
    assert_eq!(reason(r#"{"eventTime":null,"awsRegion":"us-east-1"}"#).reason, RecordRejection::MissingEventTime);
    assert_eq!(reason(r#"{"eventTime":"yesterday","awsRegion":"us-east-1"}"#).reason, RecordRejection::InvalidEventTime);
    // A lone surrogate cannot be decoded: invalid JSON, saying why.
    let surrogate = reason(r#"{"eventTime":"2024-06-01T00:00:00Z","awsRegion":"us-east-1","userAgent":"\ud800x"}"#);
    assert_eq!(surrogate.reason, RecordRejection::InvalidJson);
    assert!(surrogate.message.contains("userAgent") && surrogate.message.contains("surrogate"), "{}", surrogate.message);
    // Bytes that are not UTF-8 (here inside a string): invalid JSON, saying where.
    let bytes = b"{\"eventTime\":\"2024-06-01T00:00:00Z\",\"awsRegion\":\"us-east-1\",\"userAgent\":\"x\xff\"}";
    let latin = parse_record(bytes).unwrap_err();
    assert_eq!(latin.reason, RecordRejection::InvalidJson);
    assert_eq!(latin.message, "the record is not UTF-8: invalid byte at offset 74");
    // A log shipper's time field instead of eventTime: the message says so.
    let shipped = reason(r#"{"@timestamp":"2024-06-01T00:00:00Z","awsRegion":"us-east-1"}"#);
    assert_eq!(shipped.reason, RecordRejection::MissingEventTime);
    assert!(shipped.message.contains("has `@timestamp`") && shipped.message.contains("log shipper"), "{}", shipped.message);
    assert!(reason(r#"{"eventtime":"2024-06-01T00:00:00Z","awsRegion":"us-east-1"}"#).message.contains("has `eventtime`"));
    assert_eq!(reason(r#"{"awsRegion":"us-east-1"}"#).message, "record has no eventTime");
    // Values from the record are shown quoted, their control characters escaped.
    let hostile = reason("{\"eventTime\":\"\\u001b[31mnow\",\"awsRegion\":\"us-east-1\"}");
    assert!(hostile.message.contains("\"\\u001b[31mnow\"") && !hostile.message.contains('\u{1b}'), "{}", hostile.message);
    let region = reason("{\"eventTime\":\"2024-06-01T00:00:00Z\",\"awsRegion\":\"us\\u001b]0;x\"}");
    assert!(!region.message.contains('\u{1b}'), "{}", region.message);
    let wrong = reason(r#"{"eventTime":"2024-06-01T00:00:00Z","awsRegion":"us-east-1","eventName":5}"#);
    assert_eq!(wrong.reason, RecordRejection::WrongType);
    assert!(wrong.message.contains("eventName"), "{}", wrong.message);
    let nested = reason(r#"{"eventTime":"2024-06-01T00:00:00Z","awsRegion":"us-east-1","userIdentity":{"accountId":12}}"#);
    assert!(nested.message.contains("userIdentity") && nested.message.contains("accountId"), "{}", nested.message);
    assert_eq!(reason(r#"{"eventTime":"2024-06-01T00:00:00Z","awsRegion":"us-east-1","readOnly":"maybe"}"#).reason, RecordRejection::WrongType);
    assert_eq!(reason(r#"{"eventTime": "2024-06-01T00:00:00Z", "awsRegion": }"#).reason, RecordRejection::InvalidJson);
    assert_eq!(reason("42").reason, RecordRejection::WrongType);
    for region in ["../x", "a/b", "", "..", "us east", "x\\y", "-lead"] {
        let r = format!(r#"{{"eventTime":"2024-06-01T00:00:00Z","awsRegion":{}}}"#, serde_json::Value::from(region));
        assert_eq!(reason(&r).reason, RecordRejection::InvalidRegion, "{region:?}");
    }
}

#[test]
fn safe_names() {
    for ok in ["us-east-1", "sagov-westsouth-1r", "awsRegion1", "111122223333"] {
        assert!(is_safe_name(ok), "{ok}");
    }
    for bad in ["", ".", "..", "../x", "a/b", "a\\b", "a b", "-x", &"x".repeat(65)] {
        assert!(!is_safe_name(bad), "{bad}");
    }
}

#[test]
fn derived_ids_ignore_formatting_but_not_content() {
    let a = r#"{"eventTime":"2013-11-01T00:00:00Z","awsRegion":"r1","eventName":"x","n":1.5}"#;
    let b = "{\n  \"n\": 1.5,\n  \"eventName\": \"x\",\n  \"awsRegion\": \"r1\",\n  \"eventTime\": \"2013-11-01T00:00:00Z\"\n}";
    let c = r#"{"eventTime":"2013-11-01T00:00:00Z","awsRegion":"r1","eventName":"y","n":1.5}"#;
    let id = |r: &str| check_record(&parse_record(r.as_bytes()).unwrap(), r.as_bytes()).unwrap().derived_id.unwrap();
    assert_eq!(id(a), id(b));
    assert_ne!(id(a), id(c));
    assert!(uuid::Uuid::parse_str(&id(a)).is_ok());
    let with_id = r#"{"eventTime":"2013-11-01T00:00:00Z","awsRegion":"r1","eventID":"abc"}"#;
    assert_eq!(check_record(&parse_record(with_id.as_bytes()).unwrap(), with_id.as_bytes()).unwrap().derived_id, None);
}

#[test]
fn escaped_strings_are_decoded() {
    let batch = build(&[r#"{"eventTime":"2024-06-01T00:00:00Z","awsRegion":"us-east-1","eventID":"x","userAgent":"a \"quoted\" \u00e9 agent"}"#]);
    assert_eq!(batch.column_by_name("useragent").unwrap().as_string::<i32>().value(0), "a \"quoted\" é agent");
}

/// A record parsed from the front of the bytes read is the event `parse_record` makes of it
/// alone; what it cannot take whole (cut, bad UTF-8, bad JSON, wrong types) it leaves.
#[test]
fn parsing_from_the_front_agrees_with_parsing_the_record() {
    let records: [&[u8]; 4] = [
        br#"{"eventVersion":"1.08","eventTime":"2024-01-01T00:00:00Z","eventName":"Get\u00e9\"x","awsRegion":"us-east-1","eventID":"a","requestParameters":{"k":[1,"\u2028"]},"newKey":{"n":null}}"#,
        "{\"eventName\":\"Caf\u{e9} \u{1F600}\",\"awsRegion\":\"eu-west-1\"}".as_bytes(),
        br#"{"eventName":"x"}"#,
        br#"{}"#,
    ];
    for record in records {
        let whole = format!("{:?}", super::parse_record(record).unwrap());
        for tail in [&b""[..], b",{\"next\":1}]}", b"  \n{\"eventName\":\"\xff\"}"] {
            let bytes = [record, tail].concat();
            let (event, len) = super::parse_front(&bytes).unwrap();
            assert_eq!((format!("{event:?}"), len), (whole.clone(), record.len()));
        }
        // Cut anywhere inside, the record is left to the scan.
        for cut in 1..record.len() {
            assert!(super::parse_front(&record[..cut]).is_none(), "{cut}");
        }
    }
    for bad in [&b"{\"eventName\":\"\xff\"}"[..], b"{\"eventName\":7}", b"{\"a\":}", b"[1]"] {
        assert!(super::parse_front(bad).is_none());
        assert!(super::parse_record(bad).is_err());
    }
}
