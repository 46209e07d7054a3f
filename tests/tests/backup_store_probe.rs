//! A BackupStore's probe fails closed, on the real control plane with the operator that
//! tests/run.sh runs: wrong credentials on a real MinIO, a store whose version delete fails
//! its signature check, and an endpoint that stops answering all leave the store
//! Reachable=False with the reason, and never DeleteProtected=True; temporary (STS)
//! credentials work with their session token.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use kube::Api;
use resurgo::{
    api::backup_store::{BackupStore, BackupStoreStatus, ObjectLockMode, S3Store, SecretRef},
    backup::s3,
};
use resurgo_tests::{apply, client, install_crds, minio, unique_name};
use serde_json::json;

/// The store's status once the probe of its current spec has written it; panics after
/// `within`.
async fn probed(name: &str, within: Duration) -> BackupStoreStatus {
    let stores = Api::<BackupStore>::all(client().await);
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(status) = stores.get(name).await.expect("read the store").status
            && status.last_probed.is_some()
        {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "BackupStore {name} was not probed within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (status, reason, message) of condition `type_`.
fn condition(status: &BackupStoreStatus, type_: &str) -> (String, String, String) {
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status:?}"));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn s3_spec(name: &str, bucket: &str, endpoint: &str) -> S3Store {
    S3Store {
        bucket: bucket.into(),
        prefix: Some("lazio/".into()),
        region: None,
        endpoint: Some(endpoint.into()),
        force_path_style: true,
        allow_insecure_http: true,
        credentials_secret_ref: SecretRef {
            name: format!("{name}-s3"),
            namespace: "default".into(),
        },
    }
}

/// A credentials Secret and a BackupStore on `spec`.
fn create_store(name: &str, spec: &S3Store, access_key: &str, secret_key: &str) {
    create_store_with(
        name,
        spec,
        json!({"accessKeyId": access_key, "secretAccessKey": secret_key}),
    );
}

fn create_store_with(name: &str, spec: &S3Store, secret_data: serde_json::Value) {
    apply(
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{name}-s3"), "namespace": "default"},
                 "stringData": secret_data})
        .to_string(),
    );
    apply(
        &json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "BackupStore", "metadata": {"name": name},
                 "spec": {"s3": spec}})
        .to_string(),
    );
}

fn assert_unreachable_and_not_protected(status: &BackupStoreStatus, reason: &str, says: &str) {
    let (reachable, got_reason, message) = condition(status, "Reachable");
    assert_eq!(
        (reachable.as_str(), got_reason.as_str()),
        ("False", reason),
        "{status:?}"
    );
    assert!(message.contains(says), "{message}");
    assert_eq!(condition(status, "Ready").0, "False", "{status:?}");
    assert_eq!(
        condition(status, "DeleteProtected").0,
        "False",
        "{status:?}"
    );
    assert_eq!(status.credentials_can_delete, None, "{status:?}");
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn a_store_with_a_wrong_secret_key_is_unreachable_with_the_signature_error() {
    install_crds().await;
    let (endpoint, access_key, secret_key) = minio();
    let name = unique_name("s3-wrong-key");
    // A locked bucket: the one a store whose refusals were all read as object lock would
    // have called protected.
    let spec = s3_spec(&name, &name, &endpoint);
    s3::create_locked_bucket(
        &s3::Target::of(&spec, &access_key, &secret_key),
        ObjectLockMode::Compliance,
        1,
    )
    .await
    .expect("create the locked bucket");
    create_store(&name, &spec, &access_key, "not-the-secret-key");

    let status = probed(&name, Duration::from_secs(60)).await;
    assert_unreachable_and_not_protected(
        &status,
        "SignatureDoesNotMatch",
        "answered 403 SignatureDoesNotMatch",
    );
    assert_eq!(condition(&status, "Immutable").0, "False", "{status:?}");
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn temporary_sts_credentials_work_with_their_session_token_and_fail_without_it() {
    install_crds().await;
    let (endpoint, access_key, secret_key) = minio();
    let name = unique_name("s3-sts");
    let spec = s3_spec(&name, &name, &endpoint);
    let root = s3::Target::of(&spec, &access_key, &secret_key);
    s3::create_bucket(&root).await.expect("create the bucket");
    let (key, secret, token) = s3::assume_role(&root, 900)
        .await
        .expect("temporary credentials from MinIO's STS");

    create_store_with(
        &name,
        &spec,
        json!({"accessKeyId": key, "secretAccessKey": secret, "sessionToken": token}),
    );
    let status = probed(&name, Duration::from_secs(60)).await;
    assert_eq!(condition(&status, "Reachable").0, "True", "{status:?}");
    // A plain bucket: the probe could destroy its object, and says so.
    assert_eq!(status.credentials_can_delete, Some(true), "{status:?}");

    // The same temporary key without its token is refused, and says why.
    let tokenless = format!("{name}-tokenless");
    let spec = s3_spec(&tokenless, &name, &endpoint);
    create_store(&tokenless, &spec, &key, &secret);
    let status = probed(&tokenless, Duration::from_secs(60)).await;
    let (reachable, reason, _) = condition(&status, "Reachable");
    assert_eq!(reachable, "False", "{status:?}");
    assert_ne!(
        reason, "Unreachable",
        "the reason names the S3 error: {status:?}"
    );
    assert_eq!(condition(&status, "DeleteProtected").0, "False");
}

/// One request a fake S3 endpoint read: method and path with query.
struct Request {
    method: String,
    target: String,
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        if header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request { method, target })
}

/// An S3 endpoint on a local port that answers each request with what `answer` gives
/// (status, extra headers, body), or never answers when it gives `None`.
fn fake_s3(
    answer: impl Fn(&Request) -> Option<(u16, Vec<(&'static str, &'static str)>, String)>
    + Send
    + Sync
    + 'static,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let Some(request) = read_request(&mut stream) else {
                    return;
                };
                match answer(&request) {
                    Some((status, headers, body)) => {
                        let mut response = format!(
                            "HTTP/1.1 {status} S3\r\nContent-Length: {}\r\nConnection: close\r\n",
                            body.len()
                        );
                        for (name, value) in headers {
                            response.push_str(&format!("{name}: {value}\r\n"));
                        }
                        response.push_str("\r\n");
                        response.push_str(&body);
                        let _ = stream.write_all(response.as_bytes());
                    }
                    // Holds the connection open and silent, as a stuck server does.
                    None => std::thread::sleep(Duration::from_secs(600)),
                }
            });
        }
    });
    endpoint
}

const LOCKED: &str = "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>COMPLIANCE</Mode><Days>1</Days></DefaultRetention></Rule></ObjectLockConfiguration>";

/// Takes the probe object as a versioned, locked bucket does.
fn written() -> (u16, Vec<(&'static str, &'static str)>, String) {
    (
        200,
        vec![("ETag", "\"e\""), ("x-amz-version-id", "v1")],
        String::new(),
    )
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn a_version_delete_that_fails_its_signature_check_is_not_read_as_object_lock() {
    install_crds().await;
    let name = unique_name("s3-bad-signature");
    let endpoint = fake_s3(|request| {
        match request.method.as_str() {
        "PUT" => Some(written()),
        "GET" if request.target.contains("object-lock") => {
            Some((200, vec![], LOCKED.to_owned()))
        }
        _ => Some((
            403,
            vec![],
            "<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided.</Message></Error>".to_owned(),
        )),
    }
    });
    create_store(
        &name,
        &s3_spec(&name, "backups", &endpoint),
        "AKIDEXAMPLE",
        "secret",
    );

    let status = probed(&name, Duration::from_secs(60)).await;
    assert_unreachable_and_not_protected(
        &status,
        "SignatureDoesNotMatch",
        "deleting a version of lazio/probes/",
    );
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn a_store_that_stops_answering_is_unreachable_after_the_request_timeout() {
    install_crds().await;
    let name = unique_name("s3-silent");
    // Takes the probe object, then never answers again: every later call must time out.
    let endpoint = fake_s3(|request| (request.method == "PUT").then(written));
    let started = tokio::time::Instant::now();
    create_store(
        &name,
        &s3_spec(&name, "backups", &endpoint),
        "AKIDEXAMPLE",
        "secret",
    );

    let status = probed(&name, s3::REQUEST_TIMEOUT * 3).await;
    assert_unreachable_and_not_protected(
        &status,
        "Timeout",
        "reading the object lock of bucket backups: timed out",
    );
    let took = started.elapsed();
    assert!(
        took >= s3::REQUEST_TIMEOUT,
        "probed in {took:?}, before the timeout"
    );
}
