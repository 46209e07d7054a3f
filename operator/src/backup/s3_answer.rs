//! What an S3 answer means for the store's probe, decided from the error `Code` in the XML
//! body and not from the HTTP status alone (pure; no I/O).
//!
//! The probe concludes "the operator's credentials cannot destroy a backup" from a refused
//! delete. S3 answers 400 or 403 for a bad signature, an unknown key, an expired session
//! token and a missing bucket as well as for object lock, so reading the status alone would
//! turn a misconfigured store into a protected one. Only two answers are refusals of the
//! delete itself: `AccessDenied` (AWS under object lock, or a policy denying the delete to
//! credentials that just wrote the object) and MinIO's object-lock answer (`InvalidRequest`,
//! "Object is WORM protected"). Everything else is a failure that names its code.

/// An S3 call that did not give an answer the probe can use. The message holds what the
/// store said, never a credential.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum S3Failure {
    #[error("{what}: timed out, no answer within {timeout_seconds} s")]
    TimedOut { what: String, timeout_seconds: u64 },
    /// The store answered with an S3 error code.
    #[error("{what} answered {status} {code}: {message}")]
    Answered {
        what: String,
        status: u16,
        code: String,
        message: String,
    },
    /// No S3 answer: connection refused, DNS, TLS, an answer that is not S3's.
    #[error("{what}: {message}")]
    Failed { what: String, message: String },
}

impl S3Failure {
    /// The condition reason: the S3 error code itself (`SignatureDoesNotMatch`,
    /// `InvalidAccessKeyId`, `ExpiredToken`, `NoSuchBucket`...), `Timeout`, or `Unreachable`.
    pub fn reason(&self) -> String {
        match self {
            S3Failure::TimedOut { .. } => "Timeout".to_owned(),
            S3Failure::Answered { code, .. } => condition_reason(code),
            S3Failure::Failed { .. } => "Unreachable".to_owned(),
        }
    }
}

/// Codes that say the request or its credentials are wrong, or that the bucket is not
/// there: whatever else the store might say, it cannot be used as configured.
const UNUSABLE_CODES: &[&str] = &[
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "ExpiredToken",
    "InvalidToken",
    // MinIO's word for a session token it does not know, or a temporary key without one.
    "InvalidTokenId",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "RequestTimeTooSkewed",
    "MissingSecurityHeader",
    "InvalidSecurity",
    "AccountProblem",
    "AllAccessDisabled",
    "NoSuchBucket",
    "PermanentRedirect",
];

impl S3Failure {
    /// Whether the store is unusable as configured (credentials, signature, bucket, network),
    /// rather than lacking one feature (such as object lock) the call was about.
    pub fn makes_unreachable(&self) -> bool {
        match self {
            S3Failure::TimedOut { .. } | S3Failure::Failed { .. } => true,
            S3Failure::Answered { code, .. } => UNUSABLE_CODES.contains(&code.as_str()),
        }
    }

    /// What object_store's error says: a timeout, the S3 error code in the answer it
    /// carries, or just its message (a filesystem, a connection refused).
    pub fn of_store_error(what: &str, error: &object_store::Error) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(current) = source {
            if let Some(http) = current.downcast_ref::<object_store::client::HttpError>()
                && http.kind() == object_store::client::HttpErrorKind::Timeout
            {
                return S3Failure::TimedOut {
                    what: what.to_owned(),
                    timeout_seconds: super::s3::REQUEST_TIMEOUT.as_secs(),
                };
            }
            source = current.source();
        }
        let text = error.to_string();
        match error_of(&text) {
            (Some(code), message) => S3Failure::Answered {
                what: what.to_owned(),
                status: status_of(error, &text).unwrap_or_default(),
                code: code.to_owned(),
                message: message.unwrap_or_default().to_owned(),
            },
            (None, _) => S3Failure::Failed {
                what: what.to_owned(),
                message: text,
            },
        }
    }

    /// Whether this failure refuses the call itself (see [`is_refusal`]).
    pub fn is_refusal(&self) -> bool {
        match self {
            S3Failure::Answered {
                status,
                code,
                message,
                ..
            } => is_refusal(*status, Some(code), message),
            _ => false,
        }
    }
}

/// The HTTP status behind an object_store error: its kind, or the status its message quotes.
fn status_of(error: &object_store::Error, text: &str) -> Option<u16> {
    match error {
        object_store::Error::PermissionDenied { .. } => Some(403),
        object_store::Error::Unauthenticated { .. } => Some(401),
        object_store::Error::NotFound { .. } => Some(404),
        object_store::Error::AlreadyExists { .. } => Some(409),
        object_store::Error::Precondition { .. } => Some(412),
        _ => {
            let after = text.split("status code: ").nth(1)?;
            after.get(..3)?.parse().ok()
        }
    }
}

/// What a DeleteObject of one version answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeleteAnswer {
    Deleted,
    /// The store refused this delete (object lock, or a policy denying it): the code it gave.
    Refused {
        code: String,
    },
    /// Nothing can be concluded about deleting.
    Failed(S3Failure),
}

/// The `Code` and `Message` of an S3 error body.
pub fn error_of(body: &str) -> (Option<&str>, Option<&str>) {
    (xml_value(body, "Code"), xml_value(body, "Message"))
}

/// The first `<tag>...</tag>` value in `text`.
pub fn xml_value<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&format!("</{tag}>"))? + start;
    Some(text[start..end].trim())
}

/// An S3 error answer as a failure of `what`.
pub fn failure(what: &str, status: u16, body: &str) -> S3Failure {
    match error_of(body) {
        (Some(code), message) => S3Failure::Answered {
            what: what.to_owned(),
            status,
            code: code.to_owned(),
            message: message.unwrap_or_default().to_owned(),
        },
        (None, _) => S3Failure::Failed {
            what: what.to_owned(),
            message: format!("answered {status} without an S3 error code"),
        },
    }
}

/// What deleting one version answered with `status` and `body`.
pub fn delete_answer(what: &str, status: u16, body: &str) -> DeleteAnswer {
    if (200..300).contains(&status) {
        return DeleteAnswer::Deleted;
    }
    let (code, message) = error_of(body);
    if is_refusal(status, code, message.unwrap_or_default()) {
        return DeleteAnswer::Refused {
            code: code.unwrap_or_default().to_owned(),
        };
    }
    DeleteAnswer::Failed(failure(what, status, body))
}

/// Whether an answer refuses the delete itself, rather than the request or the credentials.
pub fn is_refusal(status: u16, code: Option<&str>, message: &str) -> bool {
    match (status, code) {
        (403, Some("AccessDenied")) => true,
        // MinIO's ErrObjectLocked. The code is generic, so the message must name the lock.
        (400, Some("InvalidRequest")) => {
            let message = message.to_ascii_lowercase();
            ["worm", "object lock", "retention"]
                .iter()
                .any(|word| message.contains(word))
        }
        _ => false,
    }
}

/// An S3 error code as a Kubernetes condition reason (`[A-Za-z][A-Za-z0-9_]*`, at most 64):
/// a store chooses the code, so anything else becomes `S3Error`.
pub fn condition_reason(code: &str) -> String {
    let fits = code.len() <= 64
        && code.starts_with(|c: char| c.is_ascii_alphabetic())
        && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if fits {
        code.to_owned()
    } else {
        "S3Error".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: &str, message: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><Key>probes/p-1</Key></Error>"
        )
    }

    fn answer(status: u16, code: &str, message: &str) -> DeleteAnswer {
        delete_answer("delete", status, &body(code, message))
    }

    fn failed_with(answer: DeleteAnswer) -> String {
        match answer {
            DeleteAnswer::Failed(failure) => failure.reason(),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn only_a_refusal_of_the_delete_itself_reads_as_protected() {
        assert_eq!(delete_answer("delete", 204, ""), DeleteAnswer::Deleted);
        assert_eq!(
            answer(
                403,
                "AccessDenied",
                "Access Denied because object protected by object lock."
            ),
            DeleteAnswer::Refused {
                code: "AccessDenied".into()
            }
        );
        assert_eq!(
            answer(
                400,
                "InvalidRequest",
                "Object is WORM protected and cannot be overwritten"
            ),
            DeleteAnswer::Refused {
                code: "InvalidRequest".into()
            }
        );
    }

    #[test]
    fn signature_credential_and_bucket_errors_are_failures_that_name_their_code() {
        // Each of these was "cannot delete" when any 400/403/409 was read as a refusal.
        for (status, code) in [
            (403, "SignatureDoesNotMatch"),
            (403, "InvalidAccessKeyId"),
            (400, "ExpiredToken"),
            (400, "InvalidToken"),
            (403, "InvalidTokenId"),
            (400, "AuthorizationHeaderMalformed"),
            (403, "RequestTimeTooSkewed"),
            (404, "NoSuchBucket"),
            (404, "NoSuchVersion"),
            (409, "OperationAborted"),
            (400, "InvalidArgument"),
            (503, "SlowDown"),
        ] {
            assert_eq!(
                failed_with(answer(status, code, "whatever")),
                code,
                "{status} {code}"
            );
        }
        // InvalidRequest is a refusal only when it is about the lock.
        assert_eq!(
            failed_with(answer(400, "InvalidRequest", "Missing required header")),
            "InvalidRequest"
        );
        // AccessDenied with another status is not S3's refusal.
        assert_eq!(failed_with(answer(400, "AccessDenied", "")), "AccessDenied");
    }

    #[test]
    fn credential_signature_bucket_and_network_failures_make_the_store_unreachable() {
        let answered = |status, code: &str| failure("read", status, &body(code, ""));
        for (status, code) in [
            (403, "SignatureDoesNotMatch"),
            (403, "InvalidAccessKeyId"),
            (400, "ExpiredToken"),
            (403, "InvalidTokenId"),
            (404, "NoSuchBucket"),
        ] {
            assert!(answered(status, code).makes_unreachable(), "{code}");
        }
        // A feature the store lacks or does not grant: reported on its own condition.
        for (status, code) in [(403, "AccessDenied"), (501, "NotImplemented")] {
            assert!(!answered(status, code).makes_unreachable(), "{code}");
        }
        let timed_out = S3Failure::TimedOut {
            what: "read".into(),
            timeout_seconds: 30,
        };
        assert!(timed_out.makes_unreachable());
        assert_eq!(timed_out.reason(), "Timeout");
        assert!(failure("read", 502, "<html>bad gateway</html>").makes_unreachable());
    }

    #[test]
    fn an_answer_that_is_not_s3_is_unreachable_and_a_hostile_code_is_not_a_reason() {
        assert_eq!(
            failed_with(delete_answer("delete", 403, "<html>Forbidden</html>")),
            "Unreachable"
        );
        assert_eq!(failed_with(answer(403, "Bad Code; rm -rf", "")), "S3Error");
        assert_eq!(condition_reason(&"A".repeat(65)), "S3Error");
        assert_eq!(
            condition_reason("SignatureDoesNotMatch"),
            "SignatureDoesNotMatch"
        );
    }

    #[test]
    fn the_message_says_what_failed_and_what_the_store_said() {
        let failure = failure(
            "deleting a version of probes/p-1",
            403,
            &body(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            ),
        );
        assert_eq!(
            failure.to_string(),
            "deleting a version of probes/p-1 answered 403 SignatureDoesNotMatch: The request signature we calculated does not match the signature you provided."
        );
    }
}
