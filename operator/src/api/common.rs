//! Field types shared by several kinds: durations, cron expressions, references and job
//! templates. Their schemas carry the CEL rules, so every kind that uses them validates the
//! same way and says the same thing when a value is wrong.

use std::{borrow::Cow, fmt, time::Duration as StdDuration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// RFC 1123 label: what Kubernetes accepts as a namespace or a Service name.
pub const DNS_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A span of time written like a Go duration: `90s`, `15m`, `4h`, `1h30m`, `500ms`.
///
/// Kept as the text the user wrote so that status and `kubectl get` echo it unchanged;
/// [`Duration::to_std`] gives the value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(pub String);

/// Why a duration string could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{value:?} is not a duration: expected a positive duration of digits followed by ms, s, m or h, such as 90s, 15m, 4h or 1h30m"
)]
pub struct DurationError {
    pub value: String,
}

impl Duration {
    /// Parses the text, with the same grammar as the CEL rule in the schema.
    pub fn to_std(&self) -> Result<StdDuration, DurationError> {
        parse_duration(&self.0)
    }
}

impl From<StdDuration> for Duration {
    /// The duration in the same grammar, to the millisecond: `1h30m`, `4m5s`, `1s250ms`.
    fn from(value: StdDuration) -> Self {
        let millis = value.as_millis();
        let parts = [
            (millis / 3_600_000, "h"),
            (millis / 60_000 % 60, "m"),
            (millis / 1_000 % 60, "s"),
            (millis % 1_000, "ms"),
        ];
        let text: String = parts
            .iter()
            .filter(|(amount, _)| *amount > 0)
            .map(|(amount, unit)| format!("{amount}{unit}"))
            .collect();
        Self(if text.is_empty() {
            "0s".to_owned()
        } else {
            text
        })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Duration {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

fn parse_duration(text: &str) -> Result<StdDuration, DurationError> {
    let error = || DurationError {
        value: text.to_owned(),
    };
    if text.is_empty() {
        return Err(error());
    }
    let mut total = StdDuration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(error());
        }
        let amount: u64 = rest[..digits].parse().map_err(|_| error())?;
        rest = &rest[digits..];
        let (unit, millis_per_unit) = if rest.starts_with("ms") {
            ("ms", 1)
        } else if rest.starts_with('s') {
            ("s", 1_000)
        } else if rest.starts_with('m') {
            ("m", 60_000)
        } else if rest.starts_with('h') {
            ("h", 3_600_000)
        } else {
            return Err(error());
        };
        rest = &rest[unit.len()..];
        let millis = amount.checked_mul(millis_per_unit).ok_or_else(error)?;
        total = total
            .checked_add(StdDuration::from_millis(millis))
            .ok_or_else(error)?;
    }
    if total.is_zero() {
        return Err(error());
    }
    Ok(total)
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 32,
            "x-kubernetes-validations": [{
                "rule": "self.matches('^([0-9]+(ms|s|m|h))+$') && self.matches('[1-9]')",
                "message": "must be a positive duration such as 90s, 15m, 4h or 1h30m"
            }]
        })
    }
}

/// A cron expression: five fields (minute hour day-of-month month day-of-week) or a macro
/// such as `@daily`. The field shapes are checked by the API server; the values (for
/// example minute 75) by the operator, which reports them on the object's `Ready` condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cron(pub String);

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One cron field: comma-separated items, each `*`, `?`, a number, a name (MON, JAN) or an
/// `L`/`W`/`#` form, optionally a range and a step.
const CRON_FIELD: &str = "([*?]|[0-9A-Za-z#]{1,5})(-[0-9A-Za-z]{1,3})?(/[0-9]{1,2})?(,([*?]|[0-9A-Za-z#]{1,5})(-[0-9A-Za-z]{1,3})?(/[0-9]{1,2})?)*";

impl JsonSchema for Cron {
    fn schema_name() -> Cow<'static, str> {
        "Cron".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let rule = format!(
            "self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|{CRON_FIELD}( +{CRON_FIELD}){{4}})$')"
        );
        json_schema!({
            "type": "string",
            "maxLength": 128,
            "x-kubernetes-validations": [{
                "rule": rule,
                "message": "must be a cron expression with five fields (minute hour day-of-month month day-of-week), such as '30 2 * * *', or @hourly, @daily, @weekly, @monthly"
            }]
        })
    }
}

/// Schema of an IANA time zone name such as `Europe/Rome` or `UTC`.
pub fn time_zone_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "default": "UTC",
        "maxLength": 64,
        "x-kubernetes-validations": [{
            "rule": "self.matches('^(UTC|[A-Za-z_]+(/[A-Za-z0-9_+-]+){1,2})$')",
            "message": "must be an IANA time zone name such as Europe/Rome or UTC"
        }]
    })
}

/// Schema of a list of complete Kubernetes objects (apiVersion, kind, metadata, ...).
/// The API server checks each one's type meta and metadata; the rest is validated when the
/// operator applies it, against that kind's own schema.
pub fn embedded_objects_schema(_: &mut SchemaGenerator) -> Schema {
    // Atomic: a manifest is one document, replaced whole. Tracked leaf by leaf, the
    // manifests of a large plan made most of its managed fields, which the API server
    // walks again on every status write.
    json_schema!({
        "type": "array",
        "maxItems": 100,
        "x-kubernetes-list-type": "atomic",
        "items": {
            "type": "object",
            "x-kubernetes-embedded-resource": true,
            "x-kubernetes-preserve-unknown-fields": true
        }
    })
}

/// Schema of a batch/v1 JobSpec kept as free-form data: embedding the typed pod template
/// would add hundreds of kilobytes per occurrence to the CRD. The API server validates the
/// spec when the operator creates the Job, and the operator reports any rejection.
pub fn job_spec_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "description": "A batch/v1 JobSpec (the `spec` of a Job: template, backoffLimit, activeDeadlineSeconds, ...).",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A Job the operator runs and waits for: data restores, data dumps and checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobTemplate {
    /// Name of this job within its list; the created Job's name is derived from it.
    #[schemars(length(min = 1, max = 40), regex(pattern = DNS_LABEL))]
    pub name: String,
    /// The JobSpec to run (batch/v1). It must finish within `timeout`.
    #[schemars(schema_with = "job_spec_schema")]
    pub spec: serde_json::Value,
    /// How long the Job may run before it counts as failed. Default: 30m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// A reference to a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedRef {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the object.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub namespace: String,
}

/// A reference to one key of a Secret or ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    /// Name of the Secret or ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub namespace: String,
    /// The key whose value is used.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A Secret the operator gave fresh values, as its own write returned it. The operator
/// trusts a Secret as its regeneration only while the Secret still has this uid and this
/// resourceVersion: any later write, by anyone, gives it another resourceVersion. Labels and
/// annotations on the Secret are never read for that. Holds no value of the Secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WrittenSecret {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
    /// Its uid after the write.
    pub uid: String,
    /// Its resourceVersion after the write.
    pub resource_version: String,
    /// When the operator wrote it.
    pub written: Time,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_in_the_grammar_they_parse_in() {
        for (millis, text) in [
            (5_400_000, "1h30m"),
            (245_000, "4m5s"),
            (1_250, "1s250ms"),
            (0, "0s"),
        ] {
            let duration = Duration::from(StdDuration::from_millis(millis));
            assert_eq!(duration.to_string(), text);
            if millis > 0 {
                assert_eq!(duration.to_std(), Ok(StdDuration::from_millis(millis)));
            }
        }
    }

    #[test]
    fn durations_parse_like_go() {
        let cases = [
            ("90s", 90_000),
            ("15m", 900_000),
            ("4h", 14_400_000),
            ("1h30m", 5_400_000),
            ("500ms", 500),
            ("72h", 259_200_000),
        ];
        for (text, millis) in cases {
            assert_eq!(
                Duration::from(text).to_std(),
                Ok(StdDuration::from_millis(millis)),
                "{text}"
            );
        }
    }

    #[test]
    fn malformed_durations_are_refused_with_the_value() {
        for text in [
            "",
            "15",
            "m",
            "15 minutes",
            "1.5h",
            "-5m",
            "5d",
            "h1",
            "0s",
            "0m0s",
        ] {
            let error = Duration::from(text).to_std().unwrap_err();
            assert_eq!(error.value, text);
        }
    }
}
