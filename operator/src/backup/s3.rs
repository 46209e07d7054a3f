//! The few S3 calls `object_store` does not make, signed with AWS Signature Version 4:
//! reading a bucket's object-lock configuration, deleting one version of an object (what an
//! attacker would do to really destroy a backup in a versioned bucket), and, for test set-ups,
//! creating a bucket with object lock and a default retention.
//!
//! Path-style addressing (`endpoint/bucket?...`), as self-hosted S3 services use; for AWS
//! itself the virtual-host form `https://bucket.s3.region.amazonaws.com` is used.

use std::time::{Duration, SystemTime};

use aws_sigv4::{
    http_request::{
        PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
        UriPathNormalizationMode, sign,
    },
    sign::v4,
};
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine as _;
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

/// S3's SigV4 rules: the path is encoded once and never normalised, and the payload's
/// SHA-256 is sent and signed as `x-amz-content-sha256`.
fn s3_settings() -> SigningSettings {
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings
}

/// What SigV4 adds to a request (`authorization`, `x-amz-date`, and with S3's settings
/// `x-amz-content-sha256`, and `x-amz-security-token` for temporary credentials), signed
/// by AWS's signer as of `time`.
#[allow(clippy::too_many_arguments)]
fn signature_headers(
    credentials: aws_credential_types::Credentials,
    region: &str,
    service: &str,
    settings: SigningSettings,
    time: SystemTime,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Vec<(String, String)>, String> {
    let identity = Identity::from(credentials);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|error| format!("signing parameters: {error}"))?
        .into();
    let request = SignableRequest::new(
        method,
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|error| format!("signing {method} {url}: {error}"))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|error| format!("signing {method} {url}: {error}"))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect())
}

/// One signed S3 request on `key` of the bucket ("" = the bucket itself).
async fn call(
    target: &Target,
    what: &str,
    method: reqwest::Method,
    key: &str,
    query: &[(&str, &str)],
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<(u16, String), S3Failure> {
    let mut url = target.url(key).map_err(|message| S3Failure::Failed {
        what: what.to_owned(),
        message,
    })?;
    if !query.is_empty() {
        let query: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{}={}", uri_encode(k), uri_encode(v)))
            .collect();
        url = format!("{url}?{}", query.join("&"));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    send(target, what, "s3", method, &url, &headers, body).await
}

/// One request to `url` signed for `service` with the target's credentials, bounded by
/// [`CONNECT_TIMEOUT`] and [`REQUEST_TIMEOUT`]; returns the status and the body. `what`
/// names the call in a failure.
async fn send(
    target: &Target,
    what: &str,
    service: &str,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(u16, String), S3Failure> {
    let failed = |message: String| S3Failure::Failed {
        what: what.to_owned(),
        message,
    };
    let credentials = aws_credential_types::Credentials::new(
        &target.access_key_id,
        &target.secret_access_key,
        target.session_token.clone(),
        None,
        "BackupStore credentials Secret",
    );
    let signed = signature_headers(
        credentials,
        &target.region,
        service,
        s3_settings(),
        SystemTime::now(),
        method.as_str(),
        url,
        headers,
        &body,
    )
    .map_err(failed)?;
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|error| failed(format!("HTTP client: {error}")))?;
    let mut request = client.request(method, url).body(body);
    for (name, value) in headers.iter().copied().chain(
        signed
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
    ) {
        request = request.header(name, value);
    }
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
    let response = request.send().await.map_err(transport)?;
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
        reqwest::Method::GET,
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
        reqwest::Method::DELETE,
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
        reqwest::Method::PUT,
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
        reqwest::Method::PUT,
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
        reqwest::Method::POST,
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
    let (status, body) = call(
        target,
        &what,
        reqwest::Method::PUT,
        "",
        &[],
        &[],
        Vec::new(),
    )
    .await?;
    if !(200..300).contains(&status) {
        return Err(failure(&what, status, &body));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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

    /// The time of AWS's SigV4 test suite, 20150830T123600Z.
    fn suite_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn suite_credentials(token: Option<&str>) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            token.map(str::to_owned),
            None,
            "test",
        )
    }

    fn authorization(headers: &[(String, String)]) -> &str {
        headers
            .iter()
            .find(|(name, _)| name == "authorization")
            .map(|(_, value)| value.as_str())
            .expect("an authorization header")
    }

    /// AWS SigV4 test suite, get-vanilla and get-vanilla-query-order-key-case.
    #[test]
    fn the_signer_reproduces_aws_test_suite_vectors() {
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
                SigningSettings::default(),
                suite_time(),
                "GET",
                url,
                &[],
                &[],
            )
            .unwrap();
            assert_eq!(
                authorization(&headers),
                format!(
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={signature}"
                ),
                "{url}"
            );
        }
    }

    /// AWS SigV4 test suite, get-vanilla-with-session-token: temporary (STS) credentials send
    /// their token and sign it.
    #[test]
    fn a_session_token_is_sent_and_signed() {
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let headers = signature_headers(
            suite_credentials(Some(token)),
            "us-east-1",
            "service",
            SigningSettings::default(),
            suite_time(),
            "GET",
            "https://example.amazonaws.com/",
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(
            authorization(&headers),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
        );
        assert!(
            headers
                .iter()
                .any(|(name, value)| name == "x-amz-security-token" && value == token)
        );
    }

    /// The S3 settings the operator signs with, against the GET Object example of AWS's S3
    /// documentation ("Signature Calculations for the Authorization Header").
    #[test]
    fn s3_requests_are_signed_as_the_s3_documentation_example() {
        let headers = signature_headers(
            aws_credential_types::Credentials::new(
                "AKIAIOSFODNN7EXAMPLE",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                None,
                None,
                "test",
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
        )
        .unwrap();
        assert_eq!(
            authorization(&headers),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert!(
            headers
                .iter()
                .any(|(name, value)| name == "x-amz-content-sha256"
                    && value == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
    }
}
