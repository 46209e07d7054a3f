//! The few S3 calls `object_store` does not make, signed with AWS Signature Version 4:
//! reading a bucket's object-lock configuration, deleting one version of an object (what an
//! attacker would do to really destroy a backup in a versioned bucket), and, for test set-ups,
//! creating a bucket with object lock and a default retention.
//!
//! Path-style addressing (`endpoint/bucket?...`), as self-hosted S3 services use; for AWS
//! itself the virtual-host form `https://bucket.s3.region.amazonaws.com` is used.

use std::time::Duration;

use base64::Engine as _;
use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::HttpRequestBody;
use sha2::Digest as _;

pub use super::s3_answer::S3Failure;
use super::s3_answer::{DeleteAnswer, delete_answer, error_of, failure};
use crate::api::backup_store::{ObjectLock, ObjectLockMode, S3Store};

/// How long opening a connection to an S3 endpoint may take. A store that does not accept
/// a connection in this time is unreachable; object_store retries a refused connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one S3 request may take, from sending it to the last byte of the answer, for
/// every call the operator makes (these and object_store's). An endpoint that accepts and
/// never answers makes the probe fail with `Timeout` after this long instead of hanging
/// the BackupStore controller. object_store's own default, kept for the backups' reads and
/// writes, which it resumes or retries on their own.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and as whom to call S3. The secret and the session token are never logged.
pub struct Target {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// The session token of temporary (STS) credentials.
    pub session_token: Option<String>,
}

impl Target {
    pub fn of(spec: &S3Store, access_key_id: &str, secret_access_key: &str) -> Self {
        let region = spec.region.clone().unwrap_or_else(|| "us-east-1".into());
        let (endpoint, path_style) = match &spec.endpoint {
            Some(endpoint) => (
                endpoint.trim_end_matches('/').to_owned(),
                spec.force_path_style,
            ),
            None => (format!("https://s3.{region}.amazonaws.com"), false),
        };
        Target {
            endpoint,
            bucket: spec.bucket.clone(),
            region,
            path_style,
            access_key_id: access_key_id.to_owned(),
            secret_access_key: secret_access_key.to_owned(),
            session_token: None,
        }
    }

    /// With the session token of temporary credentials.
    pub fn with_session_token(mut self, session_token: Option<String>) -> Self {
        self.session_token = session_token;
        self
    }

    /// The URL, without query, of `key` in the bucket ("" = the bucket).
    fn url(&self, key: &str) -> Result<String, String> {
        let (scheme, rest) = self
            .endpoint
            .split_once("://")
            .ok_or_else(|| format!("endpoint {} has no scheme", self.endpoint))?;
        let encoded_key: String = key.split('/').map(uri_encode).collect::<Vec<_>>().join("/");
        Ok(match (self.path_style, key.is_empty()) {
            (true, true) => format!("{scheme}://{rest}/{}", self.bucket),
            (true, false) => format!("{scheme}://{rest}/{}/{encoded_key}", self.bucket),
            (false, _) => format!("{scheme}://{}.{rest}/{encoded_key}", self.bucket),
        })
    }
}

impl Target {
    /// The URL of `key` in the bucket with `query`, every name and value encoded.
    fn url_with_query(&self, key: &str, query: &[(&str, &str)]) -> Result<String, String> {
        let url = self.url(key)?;
        if query.is_empty() {
            return Ok(url);
        }
        let query: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{}={}", uri_encode(k), uri_encode(v)))
            .collect();
        Ok(format!("{url}?{}", query.join("&")))
    }
}

fn uri_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `request` signed for `service` with the target's credentials by object_store's SigV4
/// signer (the one its own S3 calls use), as of now: it adds `host`, `x-amz-date`,
/// `x-amz-content-sha256` (the body's SHA-256, which it signs), `x-amz-security-token` for
/// temporary credentials, and `authorization`. For `s3` the path is signed as sent (S3
/// encodes it once); for other services, encoded once more, as SigV4 wants.
fn signed(
    target: &Target,
    service: &str,
    request: http::Request<Vec<u8>>,
) -> Result<http::Request<Vec<u8>>, String> {
    // The signer puts these in header values and panics on one that is not a valid header
    // value (a control character pasted into the Secret): refuse them here, naming only
    // which credential is wrong, never its value.
    if http::HeaderValue::from_str(&target.access_key_id).is_err() {
        return Err("the access key id is not a valid HTTP header value".into());
    }
    if let Some(token) = &target.session_token
        && http::HeaderValue::from_str(token).is_err()
    {
        return Err("the session token is not a valid HTTP header value".into());
    }
    let credential = AwsCredential {
        key_id: target.access_key_id.clone(),
        secret_key: target.secret_access_key.clone(),
        token: target.session_token.clone(),
    };
    // The signer takes object_store's body type, which reqwest cannot send: it signs a copy
    // (bodies here are a few hundred bytes), and the request goes with the original.
    let (parts, body) = request.into_parts();
    let mut signing = http::Request::from_parts(parts, HttpRequestBody::from(body.clone()));
    AwsAuthorizer::new(&credential, service, &target.region).authorize(&mut signing, None);
    Ok(http::Request::from_parts(signing.into_parts().0, body))
}

/// One signed S3 request on `key` of the bucket ("" = the bucket itself).
async fn call(
    target: &Target,
    what: &str,
    method: http::Method,
    key: &str,
    query: &[(&str, &str)],
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<(u16, String), S3Failure> {
    let url = target
        .url_with_query(key, query)
        .map_err(|message| S3Failure::Failed {
            what: what.to_owned(),
            message,
        })?;
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    send(target, what, "s3", method, &url, &headers, body).await
}

/// The unsigned request: `method` on `url` with `headers` and `body`.
fn request(
    method: http::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<http::Request<Vec<u8>>, String> {
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
        .body(body)
        .map_err(|error| format!("building the request: {error}"))
}

/// One request to `url` signed for `service` with the target's credentials, bounded by
/// [`CONNECT_TIMEOUT`] and [`REQUEST_TIMEOUT`]; returns the status and the body. `what`
/// names the call in a failure.
async fn send(
    target: &Target,
    what: &str,
    service: &str,
    method: http::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(u16, String), S3Failure> {
    let failed = |message: String| S3Failure::Failed {
        what: what.to_owned(),
        message,
    };
    let request = request(method, url, headers, body)
        .and_then(|request| signed(target, service, request))
        .map_err(failed)?;
    let request = reqwest::Request::try_from(request)
        .map_err(|error| failed(format!("building the request: {}", error.without_url())))?;
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|error| failed(format!("HTTP client: {error}")))?;
    let transport = |error: reqwest::Error| {
        if error.is_timeout() {
            S3Failure::TimedOut {
                what: what.to_owned(),
                timeout_seconds: REQUEST_TIMEOUT.as_secs(),
            }
        } else {
            // Without the URL: reqwest's message would repeat it, and what names the call.
            failed(error.without_url().to_string())
        }
    };
    let response = client.execute(request).await.map_err(transport)?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(transport)?;
    Ok((status, text))
}

/// The bucket's object lock, `None` when it has none.
pub async fn object_lock(target: &Target) -> Result<Option<ObjectLock>, S3Failure> {
    let what = format!("reading the object lock of bucket {}", target.bucket);
    let (status, body) = call(
        target,
        &what,
        http::Method::GET,
        "",
        &[("object-lock", "")],
        &[],
        Vec::new(),
    )
    .await?;
    let not_configured = matches!(
        error_of(&body).0,
        Some("ObjectLockConfigurationNotFoundError")
    );
    if not_configured || (status == 404 && error_of(&body).0.is_none()) {
        return Ok(None);
    }
    if status != 200 {
        return Err(failure(&what, status, &body));
    }
    Ok(lock_of(&body))
}

/// The object lock an `ObjectLockConfiguration` document describes.
fn lock_of(body: &str) -> Option<ObjectLock> {
    use super::s3_answer::xml_value;
    if xml_value(body, "ObjectLockEnabled") != Some("Enabled") {
        return None;
    }
    let mode = match xml_value(body, "Mode") {
        Some("COMPLIANCE") => ObjectLockMode::Compliance,
        Some("GOVERNANCE") => ObjectLockMode::Governance,
        // Lock enabled without a default retention protects nothing written without one.
        _ => return None,
    };
    let days = xml_value(body, "Days")
        .and_then(|d| d.parse::<u32>().ok())
        .or_else(|| {
            xml_value(body, "Years")
                .and_then(|y| y.parse::<u32>().ok())
                .map(|y| y * 365)
        });
    Some(ObjectLock {
        mode,
        default_retention_days: days,
    })
}

/// Tries to delete one version of an object for good: what the store answered, read by
/// [`delete_answer`] so that only a refusal of the delete itself is a refusal.
pub async fn delete_version(target: &Target, key: &str, version: &str) -> DeleteAnswer {
    let what = format!("deleting a version of {key}");
    match call(
        target,
        &what,
        http::Method::DELETE,
        key,
        &[("versionId", version)],
        &[],
        Vec::new(),
    )
    .await
    {
        Ok((status, body)) => delete_answer(&what, status, &body),
        Err(failure) => DeleteAnswer::Failed(failure),
    }
}

/// Creates the bucket with object lock and a default retention (test and demo set-ups).
pub async fn create_locked_bucket(
    target: &Target,
    mode: ObjectLockMode,
    days: u32,
) -> Result<(), S3Failure> {
    let what = format!("creating bucket {}", target.bucket);
    let (status, body) = call(
        target,
        &what,
        http::Method::PUT,
        "",
        &[],
        &[("x-amz-bucket-object-lock-enabled", "true".into())],
        Vec::new(),
    )
    .await?;
    if !(200..300).contains(&status) {
        return Err(failure(&what, status, &body));
    }
    let mode = match mode {
        ObjectLockMode::Compliance => "COMPLIANCE",
        ObjectLockMode::Governance => "GOVERNANCE",
    };
    let config = format!(
        "<ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>{mode}</Mode><Days>{days}</Days></DefaultRetention></Rule></ObjectLockConfiguration>"
    );
    let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(config.as_bytes()));
    let what = format!("setting the object lock of {}", target.bucket);
    let (status, body) = call(
        target,
        &what,
        http::Method::PUT,
        "",
        &[("object-lock", "")],
        &[("content-md5", md5)],
        config.into_bytes(),
    )
    .await?;
    if !(200..300).contains(&status) {
        return Err(failure(&what, status, &body));
    }
    Ok(())
}

/// Temporary credentials from the endpoint's STS `AssumeRole` (test set-ups: MinIO hands
/// them to its own users): (access key id, secret access key, session token).
pub async fn assume_role(
    target: &Target,
    seconds: u32,
) -> Result<(String, String, String), S3Failure> {
    let what = format!("AssumeRole at {}", target.endpoint);
    let body = format!("Action=AssumeRole&DurationSeconds={seconds}&Version=2011-06-15");
    let (status, answer) = send(
        target,
        &what,
        "sts",
        http::Method::POST,
        &format!("{}/", target.endpoint),
        &[("content-type", "application/x-www-form-urlencoded")],
        body.into_bytes(),
    )
    .await?;
    let value = |tag| super::s3_answer::xml_value(&answer, tag).map(str::to_owned);
    match (
        status,
        value("AccessKeyId"),
        value("SecretAccessKey"),
        value("SessionToken"),
    ) {
        (200, Some(key), Some(secret), Some(token)) => Ok((key, secret, token)),
        _ => Err(failure(&what, status, &answer)),
    }
}

/// Creates a plain bucket, without object lock (test set-ups).
pub async fn create_bucket(target: &Target) -> Result<(), S3Failure> {
    let what = format!("creating bucket {}", target.bucket);
    let (status, body) = call(target, &what, http::Method::PUT, "", &[], &[], Vec::new()).await?;
    if !(200..300).contains(&status) {
        return Err(failure(&what, status, &body));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn target() -> Target {
        Target {
            endpoint: "http://127.0.0.1:9000".into(),
            bucket: "backups".into(),
            region: "us-east-1".into(),
            path_style: true,
            access_key_id: "a".into(),
            secret_access_key: "s".into(),
            session_token: None,
        }
    }

    #[test]
    fn keys_are_encoded_per_segment_and_path_style_puts_the_bucket_first() {
        assert_eq!(
            target().url("probes/a b").unwrap(),
            "http://127.0.0.1:9000/backups/probes/a%20b"
        );
        let virtual_host = Target {
            path_style: false,
            endpoint: "https://s3.eu-west-1.amazonaws.com".into(),
            ..target()
        };
        assert_eq!(
            virtual_host.url("").unwrap(),
            "https://backups.s3.eu-west-1.amazonaws.com/"
        );
    }

    #[test]
    fn object_lock_is_read_from_the_configuration() {
        let body = "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>COMPLIANCE</Mode><Days>30</Days></DefaultRetention></Rule></ObjectLockConfiguration>";
        assert_eq!(
            lock_of(body),
            Some(ObjectLock {
                mode: ObjectLockMode::Compliance,
                default_retention_days: Some(30)
            })
        );
        let no_retention = "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled></ObjectLockConfiguration>";
        assert_eq!(lock_of(no_retention), None);
    }

    /// The reference the signer is checked against: AWS's own SigV4 signer (`aws-sigv4`, a
    /// dev-dependency only), first shown to reproduce AWS's published test vectors.
    mod reference {
        use std::time::SystemTime;

        use aws_sigv4::{
            http_request::{
                PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
                SigningSettings, UriPathNormalizationMode, sign,
            },
            sign::v4,
        };
        use aws_smithy_runtime_api::client::identity::Identity;

        /// SigV4 as S3 wants it: the path encoded once and never normalised, and the
        /// payload's SHA-256 sent and signed as `x-amz-content-sha256`.
        pub fn s3_settings() -> SigningSettings {
            let mut settings = SigningSettings::default();
            settings.percent_encoding_mode = PercentEncodingMode::Single;
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
            settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
            settings
        }

        /// SigV4 for other services (STS), with the payload's SHA-256 sent and signed as
        /// object_store's signer always does.
        pub fn service_settings() -> SigningSettings {
            let mut settings = SigningSettings::default();
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
            settings
        }

        pub fn credentials(
            key_id: &str,
            secret: &str,
            token: Option<&str>,
        ) -> aws_credential_types::Credentials {
            aws_credential_types::Credentials::new(
                key_id,
                secret,
                token.map(str::to_owned),
                None,
                "test",
            )
        }

        /// The headers aws-sigv4 adds to the request, signed as of `time`.
        #[allow(clippy::too_many_arguments)]
        pub fn signature_headers(
            credentials: aws_credential_types::Credentials,
            region: &str,
            service: &str,
            settings: SigningSettings,
            time: SystemTime,
            method: &str,
            url: &str,
            headers: &[(&str, &str)],
            body: &[u8],
        ) -> Vec<(String, String)> {
            let identity = Identity::from(credentials);
            let params = v4::SigningParams::builder()
                .identity(&identity)
                .region(region)
                .name(service)
                .time(time)
                .settings(settings)
                .build()
                .expect("signing parameters")
                .into();
            let request = SignableRequest::new(
                method,
                url,
                headers.iter().copied(),
                SignableBody::Bytes(body),
            )
            .expect("a signable request");
            let (instructions, _signature) = sign(request, &params).expect("signed").into_parts();
            instructions
                .headers()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect()
        }
    }

    use reference::{credentials, s3_settings, service_settings, signature_headers};

    /// The time of AWS's SigV4 test suite, 20150830T123600Z.
    fn suite_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn suite_credentials(token: Option<&str>) -> aws_credential_types::Credentials {
        credentials(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            token,
        )
    }

    fn value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }

    fn authorization(headers: &[(String, String)]) -> &str {
        value(headers, "authorization").expect("an authorization header")
    }

    /// AWS SigV4 test suite, get-vanilla and get-vanilla-query-order-key-case.
    #[test]
    fn the_reference_reproduces_aws_test_suite_vectors() {
        for (url, signature) in [
            (
                "https://example.amazonaws.com/",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "https://example.amazonaws.com/?Param2=value2&Param1=value1",
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            ),
        ] {
            let headers = signature_headers(
                suite_credentials(None),
                "us-east-1",
                "service",
                aws_sigv4::http_request::SigningSettings::default(),
                suite_time(),
                "GET",
                url,
                &[],
                &[],
            );
            assert_eq!(
                authorization(&headers),
                format!(
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={signature}"
                ),
                "{url}"
            );
        }
    }

    /// AWS SigV4 test suite, get-vanilla-with-session-token.
    #[test]
    fn the_reference_signs_a_session_token_as_the_aws_test_suite() {
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let headers = signature_headers(
            suite_credentials(Some(token)),
            "us-east-1",
            "service",
            aws_sigv4::http_request::SigningSettings::default(),
            suite_time(),
            "GET",
            "https://example.amazonaws.com/",
            &[],
            &[],
        );
        assert_eq!(
            authorization(&headers),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
        );
        assert_eq!(value(&headers, "x-amz-security-token"), Some(token));
    }

    /// The reference with S3's settings, against the GET Object example of AWS's S3
    /// documentation ("Signature Calculations for the Authorization Header"), which signs
    /// `x-amz-content-sha256` as object_store's signer does.
    #[test]
    fn the_reference_signs_as_the_s3_documentation_example() {
        let headers = signature_headers(
            credentials(
                "AKIAIOSFODNN7EXAMPLE",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                None,
            ),
            "us-east-1",
            "s3",
            s3_settings(),
            // 20130524T000000Z
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_369_353_600),
            "GET",
            "https://examplebucket.s3.amazonaws.com/test.txt",
            &[("range", "bytes=0-9")],
            &[],
        );
        assert_eq!(
            authorization(&headers),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert_eq!(
            value(&headers, "x-amz-content-sha256"),
            Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
    }

    /// Signs `method` on `url` with the operator's signer (object_store's, as of now), then
    /// with the reference as of the `x-amz-date` the signer wrote, and requires the same
    /// signature and the same SigV4 headers.
    #[allow(clippy::too_many_arguments)]
    fn assert_signed_as_the_reference(
        target: &Target,
        service: &str,
        settings: aws_sigv4::http_request::SigningSettings,
        method: http::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        let request = request(method.clone(), url, headers, body.to_vec()).unwrap();
        let signed = signed(target, service, request).unwrap();
        assert_eq!(signed.body(), body, "the body goes as it was signed");
        let sent: Vec<(String, String)> = signed
            .headers()
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .collect();
        let date = value(&sent, "x-amz-date").expect("an x-amz-date header");
        let time: SystemTime = chrono::NaiveDateTime::parse_from_str(date, "%Y%m%dT%H%M%SZ")
            .expect("x-amz-date as SigV4 writes it")
            .and_utc()
            .into();
        let expected = signature_headers(
            credentials(
                &target.access_key_id,
                &target.secret_access_key,
                target.session_token.as_deref(),
            ),
            &target.region,
            service,
            settings,
            time,
            method.as_str(),
            url,
            headers,
            body,
        );
        assert!(
            authorization(&expected).contains("Signature="),
            "{expected:?}"
        );
        for (name, value) in &expected {
            assert_eq!(
                self::value(&sent, name),
                Some(value.as_str()),
                "{method} {url}: {name}"
            );
        }
        for (name, value) in headers {
            assert_eq!(self::value(&sent, name), Some(*value), "{name} is sent");
        }
    }

    fn example_target() -> Target {
        Target {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            region: "eu-central-1".into(),
            ..target()
        }
    }

    #[test]
    fn the_object_lock_read_is_signed_as_aws_signs_it() {
        let target = example_target();
        let url = target.url_with_query("", &[("object-lock", "")]).unwrap();
        assert_eq!(url, "http://127.0.0.1:9000/backups?object-lock=");
        assert_signed_as_the_reference(
            &target,
            "s3",
            s3_settings(),
            http::Method::GET,
            &url,
            &[],
            &[],
        );
    }

    /// A key and a version id with characters that must be encoded: the path is signed
    /// as sent (once encoded), the query sorted and encoded.
    #[test]
    fn a_version_delete_is_signed_as_aws_signs_it() {
        let target = example_target();
        let url = target
            .url_with_query(
                "probes/store one+1/é",
                &[("versionId", "3/L4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY=")],
            )
            .unwrap();
        assert_signed_as_the_reference(
            &target,
            "s3",
            s3_settings(),
            http::Method::DELETE,
            &url,
            &[],
            &[],
        );
    }

    /// With a body (its SHA-256 is signed), signed headers of the caller's, temporary
    /// credentials' token, and the virtual-host address of AWS itself.
    #[test]
    fn a_put_with_a_body_and_a_session_token_is_signed_as_aws_signs_it() {
        let target = Target {
            endpoint: "https://s3.eu-central-1.amazonaws.com".into(),
            path_style: false,
            session_token: Some("FwoGZXIvYXdzEJr//////////wEaDO+token/with=chars".into()),
            ..example_target()
        };
        let body = b"<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled></ObjectLockConfiguration>";
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body));
        let url = target.url_with_query("", &[("object-lock", "")]).unwrap();
        assert_signed_as_the_reference(
            &target,
            "s3",
            s3_settings(),
            http::Method::PUT,
            &url,
            &[
                ("content-md5", &md5),
                ("x-amz-bucket-object-lock-enabled", "true"),
            ],
            body,
        );
    }

    #[test]
    fn an_sts_call_is_signed_as_aws_signs_it() {
        let target = example_target();
        assert_signed_as_the_reference(
            &target,
            "sts",
            service_settings(),
            http::Method::POST,
            "http://127.0.0.1:9000/",
            &[("content-type", "application/x-www-form-urlencoded")],
            b"Action=AssumeRole&DurationSeconds=900&Version=2011-06-15",
        );
    }

    /// object_store's signer panics on a credential that is not a valid header value: such
    /// a Secret is a failure naming the credential, without its value.
    #[test]
    fn a_credential_that_cannot_be_a_header_is_refused_without_its_value() {
        let get = || {
            request(
                http::Method::GET,
                "http://127.0.0.1:9000/backups",
                &[],
                vec![],
            )
            .unwrap()
        };
        let key = Target {
            access_key_id: "AKIA\nEXAMPLE".into(),
            ..target()
        };
        let error = signed(&key, "s3", get()).unwrap_err();
        assert!(
            error.contains("access key id") && !error.contains("AKIA"),
            "{error}"
        );
        let token = Target {
            session_token: Some("secret-token\u{7f}".into()),
            ..target()
        };
        let error = signed(&token, "s3", get()).unwrap_err();
        assert!(
            error.contains("session token") && !error.contains("secret-token"),
            "{error}"
        );
    }
}
