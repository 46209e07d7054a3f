//! The few S3 calls `object_store` does not make, signed with AWS Signature Version 4:
//! reading a bucket's object-lock configuration, deleting one version of an object (what an
//! attacker would do to really destroy a backup in a versioned bucket), and, for test set-ups,
//! creating a bucket with object lock and a default retention.
//!
//! Path-style addressing (`endpoint/bucket?...`), as self-hosted S3 services use; for AWS
//! itself the virtual-host form `https://bucket.s3.region.amazonaws.com` is used.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use k8s_openapi::jiff::Timestamp;
use sha2::{Digest, Sha256};

use super::archive::sha256_hex;
use crate::api::backup_store::{ObjectLock, ObjectLockMode, S3Store};

/// Where and as whom to call S3. The secret is never logged.
pub struct Target {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
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
        }
    }

    /// (URL without query, host header, canonical URI) of `key` in the bucket ("" = bucket).
    fn address(&self, key: &str) -> Result<(String, String, String), String> {
        let (scheme, rest) = self
            .endpoint
            .split_once("://")
            .ok_or_else(|| format!("endpoint {} has no scheme", self.endpoint))?;
        let encoded_key: String = key.split('/').map(uri_encode).collect::<Vec<_>>().join("/");
        if self.path_style {
            let uri = if key.is_empty() {
                format!("/{}", self.bucket)
            } else {
                format!("/{}/{encoded_key}", self.bucket)
            };
            Ok((format!("{scheme}://{rest}{uri}"), rest.to_owned(), uri))
        } else {
            let host = format!("{}.{rest}", self.bucket);
            let uri = format!("/{encoded_key}");
            Ok((format!("{scheme}://{host}{uri}"), host, uri))
        }
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

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// One signed request; returns the status and the body.
async fn call(
    target: &Target,
    method: reqwest::Method,
    key: &str,
    query: &[(&str, &str)],
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<(u16, String), String> {
    let (url, host, uri) = target.address(key)?;
    let now = Timestamp::now();
    let amz_date = now.strftime("%Y%m%dT%H%M%SZ").to_string();
    let date = now.strftime("%Y%m%d").to_string();
    let payload_hash = sha256_hex(&body);
    let mut query: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k), uri_encode(v)))
        .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut all_headers: Vec<(String, String)> = vec![
        ("host".into(), host),
        ("x-amz-content-sha256".into(), payload_hash.clone()),
        ("x-amz-date".into(), amz_date.clone()),
    ];
    all_headers.extend(
        headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned())),
    );
    all_headers.sort();
    let canonical_headers: String = all_headers
        .iter()
        .map(|(k, v)| format!("{k}:{v}\n"))
        .collect();
    let signed_headers = all_headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{method}\n{uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}"
    );
    let scope = format!("{date}/{}/s3/aws4_request", target.region);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let mut signing_key = hmac(
        format!("AWS4{}", target.secret_access_key).as_bytes(),
        &date,
    );
    for part in [target.region.as_str(), "s3", "aws4_request"] {
        signing_key = hmac(&signing_key, part);
    }
    let signature: String = hmac(&signing_key, &string_to_sign)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        target.access_key_id
    );
    let full_url = if canonical_query.is_empty() {
        url
    } else {
        format!("{url}?{canonical_query}")
    };
    let client = reqwest::Client::new();
    let mut request = client
        .request(method, &full_url)
        .header("authorization", authorization)
        .body(body);
    for (name, value) in &all_headers {
        if name != "host" {
            request = request.header(name.as_str(), value.as_str());
        }
    }
    let response = request
        .send()
        .await
        .map_err(|error| format!("{full_url}: {error}"))?;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    Ok((status, text))
}

fn xml_value<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&format!("</{tag}>"))? + start;
    Some(text[start..end].trim())
}

/// The bucket's object lock, `None` when it has none.
pub async fn object_lock(target: &Target) -> Result<Option<ObjectLock>, String> {
    let (status, body) = call(
        target,
        reqwest::Method::GET,
        "",
        &[("object-lock", "")],
        &[],
        Vec::new(),
    )
    .await?;
    if status == 404 || body.contains("ObjectLockConfigurationNotFound") {
        return Ok(None);
    }
    if status != 200 {
        return Err(format!(
            "reading the object lock of bucket {} answered {status}: {}",
            target.bucket,
            xml_value(&body, "Message").unwrap_or(&body)
        ));
    }
    if xml_value(&body, "ObjectLockEnabled") != Some("Enabled") {
        return Ok(None);
    }
    let mode = match xml_value(&body, "Mode") {
        Some("COMPLIANCE") => ObjectLockMode::Compliance,
        Some("GOVERNANCE") => ObjectLockMode::Governance,
        // Lock enabled without a default retention protects nothing written without one.
        _ => return Ok(None),
    };
    let days = xml_value(&body, "Days")
        .and_then(|d| d.parse::<u32>().ok())
        .or_else(|| {
            xml_value(&body, "Years")
                .and_then(|y| y.parse::<u32>().ok())
                .map(|y| y * 365)
        });
    Ok(Some(ObjectLock {
        mode,
        default_retention_days: days,
    }))
}

/// Tries to delete one version of an object for good. `Ok(true)` when it was deleted.
pub async fn delete_version(target: &Target, key: &str, version: &str) -> Result<bool, String> {
    let (status, body) = call(
        target,
        reqwest::Method::DELETE,
        key,
        &[("versionId", version)],
        &[],
        Vec::new(),
    )
    .await?;
    match status {
        200..=299 => Ok(true),
        400 | 403 | 409 => Ok(false),
        _ => Err(format!(
            "deleting a version of {key} answered {status}: {}",
            xml_value(&body, "Message").unwrap_or(&body)
        )),
    }
}

/// Creates the bucket with object lock and a default retention (test and demo set-ups).
pub async fn create_locked_bucket(
    target: &Target,
    mode: ObjectLockMode,
    days: u32,
) -> Result<(), String> {
    let (status, body) = call(
        target,
        reqwest::Method::PUT,
        "",
        &[],
        &[("x-amz-bucket-object-lock-enabled", "true".into())],
        Vec::new(),
    )
    .await?;
    if !(200..300).contains(&status) {
        return Err(format!(
            "creating bucket {} answered {status}: {body}",
            target.bucket
        ));
    }
    let mode = match mode {
        ObjectLockMode::Compliance => "COMPLIANCE",
        ObjectLockMode::Governance => "GOVERNANCE",
    };
    let config = format!(
        "<ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>{mode}</Mode><Days>{days}</Days></DefaultRetention></Rule></ObjectLockConfiguration>"
    );
    let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(config.as_bytes()));
    let (status, body) = call(
        target,
        reqwest::Method::PUT,
        "",
        &[("object-lock", "")],
        &[("content-md5", md5)],
        config.into_bytes(),
    )
    .await?;
    if !(200..300).contains(&status) {
        return Err(format!(
            "setting the object lock of {} answered {status}: {body}",
            target.bucket
        ));
    }
    Ok(())
}

/// Creates a plain bucket, without object lock (test set-ups).
pub async fn create_bucket(target: &Target) -> Result<(), String> {
    let (status, body) = call(target, reqwest::Method::PUT, "", &[], &[], Vec::new()).await?;
    if !(200..300).contains(&status) {
        return Err(format!(
            "creating bucket {} answered {status}: {body}",
            target.bucket
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_per_segment_and_path_style_puts_the_bucket_first() {
        let target = Target {
            endpoint: "http://127.0.0.1:9000".into(),
            bucket: "backups".into(),
            region: "us-east-1".into(),
            path_style: true,
            access_key_id: "a".into(),
            secret_access_key: "s".into(),
        };
        assert_eq!(
            target.address("probes/a b").unwrap(),
            (
                "http://127.0.0.1:9000/backups/probes/a%20b".into(),
                "127.0.0.1:9000".into(),
                "/backups/probes/a%20b".into()
            )
        );
    }

    #[test]
    fn object_lock_is_read_from_the_configuration() {
        let body = "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>COMPLIANCE</Mode><Days>30</Days></DefaultRetention></Rule></ObjectLockConfiguration>";
        assert_eq!(xml_value(body, "Mode"), Some("COMPLIANCE"));
        assert_eq!(xml_value(body, "Days"), Some("30"));
        assert_eq!(xml_value(body, "Years"), None);
    }
}
