//! Restore tests, the pure part: the scratch namespaces a backup is restored into, what the
//! restored copy must look like to count as equal to the backup, and what the check Jobs
//! say. The BackupSchedule controller ([`super::schedule`]) does the I/O.
//!
//! A restore test keeps its state in the cluster, not in the operator's memory: the scratch
//! namespaces carry the schedule (label [`SCRATCH_LABEL`]), the backup under test and, once
//! the restored objects were read back equal, the sentence saying so. An operator that
//! restarts in the middle finds them by label and carries on, or deletes them.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::{SCHEDULE_LABEL, archive, selection};
use crate::labels;

/// Label on scratch namespaces and check Jobs: the name of the schedule whose restore test
/// made them.
pub const SCRATCH_LABEL: &str = "resurgo.dev/verification-of";
/// Annotation on a scratch namespace: the Backup restored into it.
pub const BACKUP_ANNOTATION: &str = "resurgo.dev/verifying-backup";
/// Annotation on a scratch namespace: the namespace of the backup it holds a copy of.
pub const SOURCE_ANNOTATION: &str = "resurgo.dev/source-namespace";
/// Annotation on the first scratch namespace, written once every restored object was read
/// back equal to the backup: what was compared, for the verification message.
pub const RESTORED_ANNOTATION: &str = "resurgo.dev/restored";
/// Label on a check Job: the name of the check in `spec.verification.checks`.
pub const CHECK_LABEL: &str = "resurgo.dev/check";
/// The NetworkPolicy that keeps restored workloads away from everything but their own
/// scratch namespaces and DNS.
pub const ISOLATION_POLICY: &str = "resurgo-verification-isolation";

/// How long a check may run when its template sets no timeout.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The name of the scratch namespace for the `index`th source namespace of a test started
/// at `started`: new for every test, because a deleted namespace lingers while it
/// terminates.
pub fn scratch_name(schedule: &str, started: Timestamp, index: usize) -> String {
    format!(
        "resurgo-verify-{}-{index}-{}",
        started.as_second(),
        archive::sha256_hex(schedule.as_bytes())
    )
    .chars()
    .take(63)
    .collect()
}

/// The scratch namespace: restricted Pod Security, owned by the schedule (so the garbage
/// collector removes it with the schedule) and labelled so it can be found again.
pub fn scratch_namespace(
    name: &str,
    schedule: &str,
    schedule_uid: &str,
    backup: &str,
    source: &str,
) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": name,
        "labels": {
            labels::MANAGED_BY_KEY: labels::MANAGED_BY,
            SCHEDULE_LABEL: schedule,
            SCRATCH_LABEL: schedule,
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        },
        "annotations": {BACKUP_ANNOTATION: backup, SOURCE_ANNOTATION: source},
        "ownerReferences": [{"apiVersion": "resurgo.dev/v1alpha1", "kind": "BackupSchedule",
                             "name": schedule, "uid": schedule_uid}],
    }})
}

/// Default-deny for the restored copy: a restored CronJob or worker must not reach the
/// production systems the original talks to. Traffic between the scratch namespaces of the
/// same test, and DNS, stay open so that checks can reach the restored services. Network
/// policies add up: one restored from the backup can open more.
pub fn isolation_policy(namespace: &str, schedule: &str) -> Value {
    let same_test = json!({"namespaceSelector": {"matchLabels": {SCRATCH_LABEL: schedule}}});
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": ISOLATION_POLICY, "namespace": namespace,
                        "labels": {labels::MANAGED_BY_KEY: labels::MANAGED_BY}},
           "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{"from": [same_test]}],
                    "egress": [{"to": [same_test]},
                               {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
                                "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]}})
}

/// A backed-up object as it is applied into its scratch namespace. Node ports are left for
/// the API server to choose: the original still holds them in the same cluster.
pub fn scratch_copy(object: &Value, scratch: &str) -> Value {
    let mut copy = object.clone();
    copy["metadata"]["namespace"] = json!(scratch);
    without_node_ports(&mut copy);
    copy
}

/// An object as the comparison sees it: without server-set fields (see
/// [`selection::clean`]), its namespace, and the node ports a scratch copy gets anew.
pub fn comparable(object: &Value) -> Value {
    let mut object = selection::clean(object.clone());
    if let Some(metadata) = object["metadata"].as_object_mut() {
        metadata.remove("namespace");
    }
    without_node_ports(&mut object);
    object
}

fn without_node_ports(object: &mut Value) {
    if object["kind"] != "Service" {
        return;
    }
    if let Some(ports) = object["spec"]["ports"].as_array_mut() {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            port.remove("nodePort");
        }
    }
}

/// Where the restored copy differs from the backed-up object, as a field path; `None` when
/// they are equal (see [`comparable`]). Only paths, never values: the object may be a
/// Secret, and the answer goes into status.
pub fn difference(original: &Value, restored: &Value) -> Option<String> {
    first_difference(&comparable(original), &comparable(restored), String::new())
}

fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    let at = |path: String| Some(if path.is_empty() { ".".into() } else { path });
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort_unstable();
            keys.dedup();
            keys.into_iter().find_map(|key| {
                let field = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => first_difference(x, y, field),
                    (Some(_), None) => Some(format!("{field} (missing in the restored copy)")),
                    (None, Some(_)) => Some(format!("{field} (not in the backup)")),
                    (None, None) => None,
                }
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => at(path),
    }
}

/// The name of the Job a check runs as, in the scratch namespace.
pub fn check_job_name(check: &str) -> String {
    format!("check-{check}")
}

/// Where one check Job stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Not finished; created at this time.
    Running {
        created: Timestamp,
    },
    Complete,
    /// Failed, with the Job controller's reason.
    Failed(String),
}

/// A Job's state from its conditions.
pub fn job_state(job: &Value) -> JobState {
    let condition = |kind: &str| {
        job["status"]["conditions"].as_array().and_then(|c| {
            c.iter()
                .find(|c| c["type"] == kind && c["status"] == "True")
        })
    };
    if condition("Complete").is_some() {
        return JobState::Complete;
    }
    if let Some(failed) = condition("Failed") {
        let why = failed["message"]
            .as_str()
            .filter(|m| !m.is_empty())
            .or(failed["reason"].as_str())
            .unwrap_or("failed");
        return JobState::Failed(why.to_owned());
    }
    let created = job["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(Timestamp::UNIX_EPOCH);
    JobState::Running { created }
}

/// One check of a running restore test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub state: JobState,
    pub timeout: Duration,
}

/// What the checks of a restore test say together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checks {
    /// Every check completed.
    Passed,
    /// The first check that failed or ran out of time, in words.
    Failed(String),
    /// Some are still running; look again at this time at the latest (the first timeout).
    Running { until: Timestamp },
}

/// The checks' verdict at `now`. A failure is reported at once, without waiting for the
/// others.
pub fn checks(checks: &[Check], now: Timestamp) -> Checks {
    let mut until: Option<Timestamp> = None;
    for check in checks {
        match &check.state {
            JobState::Complete => {}
            JobState::Failed(why) => {
                return Checks::Failed(format!("check {} failed: {why}", check.name));
            }
            JobState::Running { created } => {
                let timeout =
                    SignedDuration::try_from(check.timeout).unwrap_or(SignedDuration::MAX);
                let deadline = created.checked_add(timeout).unwrap_or(Timestamp::MAX);
                if deadline <= now {
                    return Checks::Failed(format!(
                        "check {} did not finish within its timeout of {}",
                        check.name,
                        crate::api::common::Duration::from(check.timeout)
                    ));
                }
                until = Some(until.map_or(deadline, |u| u.min(deadline)));
            }
        }
    }
    match until {
        Some(until) => Checks::Running { until },
        None => Checks::Passed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_780_000_000 + seconds).unwrap()
    }

    fn check(name: &str, state: JobState) -> Check {
        Check {
            name: name.into(),
            state,
            timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn scratch_names_are_valid_namespace_names_and_new_for_every_test() {
        let long = "s".repeat(253);
        let name = scratch_name(&long, at(0), 3);
        assert!(name.len() <= 63, "{name}");
        assert!(name.starts_with("resurgo-verify-"));
        assert!(!name.ends_with('-'));
        assert_ne!(name, scratch_name(&long, at(1), 3));
        assert_ne!(name, scratch_name(&long, at(0), 4));
        assert_ne!(scratch_name("a", at(0), 0), scratch_name("b", at(0), 0));
    }

    #[test]
    fn a_copy_equal_apart_from_server_set_fields_namespace_and_node_ports_is_equal() {
        let original = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "prod", "labels": {"app": "web"}},
            "spec": {"type": "NodePort", "selector": {"app": "web"},
                     "ports": [{"port": 80, "nodePort": 30080}]}});
        let copy = scratch_copy(&original, "resurgo-verify-1");
        assert_eq!(copy["metadata"]["namespace"], "resurgo-verify-1");
        assert!(copy["spec"]["ports"][0].get("nodePort").is_none());
        let mut restored = copy.clone();
        restored["metadata"]["uid"] = json!("u");
        restored["metadata"]["resourceVersion"] = json!("7");
        restored["spec"]["clusterIP"] = json!("10.0.0.9");
        restored["spec"]["ports"][0]["nodePort"] = json!(31000);
        restored["status"] = json!({"loadBalancer": {}});
        assert_eq!(difference(&original, &restored), None);
    }

    #[test]
    fn a_difference_names_the_field_and_never_the_value() {
        let original = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "namespace": "prod"},
            "data": {"password": "c2VjcmV0", "user": "YQ=="}});
        let mut restored = original.clone();
        restored["data"]["password"] = json!("b3RoZXI=");
        let found = difference(&original, &restored).unwrap();
        assert_eq!(found, "data.password");
        restored["data"].as_object_mut().unwrap().remove("password");
        let found = difference(&original, &restored).unwrap();
        assert_eq!(found, "data.password (missing in the restored copy)");
        assert!(!found.contains("c2VjcmV0"));
        let mut labelled = original.clone();
        labelled["metadata"]["labels"] = json!({"extra": "x"});
        assert_eq!(
            difference(&original, &labelled).unwrap(),
            "metadata.labels (not in the backup)"
        );
        let mut longer = json!({"kind": "ConfigMap", "metadata": {"name": "a"}, "x": [1, 2]});
        let original_list = longer.clone();
        longer["x"] = json!([1, 2, 3]);
        assert_eq!(difference(&original_list, &longer).unwrap(), "x");
    }

    #[test]
    fn job_states_come_from_the_job_conditions() {
        let created = json!({"metadata": {"creationTimestamp": "2026-06-01T00:00:00Z"}});
        assert_eq!(
            job_state(&created),
            JobState::Running {
                created: "2026-06-01T00:00:00Z".parse().unwrap()
            }
        );
        let complete = json!({"status": {"conditions": [
            {"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]}});
        assert_eq!(job_state(&complete), JobState::Complete);
        let failed = json!({"status": {"conditions": [{"type": "Failed", "status": "True",
            "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]}});
        assert_eq!(
            job_state(&failed),
            JobState::Failed("Job was active longer than specified deadline".into())
        );
        let failed_without_message = json!({"status": {"conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}});
        assert_eq!(
            job_state(&failed_without_message),
            JobState::Failed("BackoffLimitExceeded".into())
        );
    }

    #[test]
    fn checks_pass_together_fail_by_name_and_time_out_in_words() {
        assert_eq!(
            checks(
                &[
                    check("a", JobState::Complete),
                    check("b", JobState::Complete)
                ],
                at(0)
            ),
            Checks::Passed
        );
        assert_eq!(checks(&[], at(0)), Checks::Passed);
        assert_eq!(
            checks(
                &[
                    check("a", JobState::Running { created: at(0) }),
                    check("b", JobState::Failed("BackoffLimitExceeded".into()))
                ],
                at(1)
            ),
            Checks::Failed("check b failed: BackoffLimitExceeded".into())
        );
        assert_eq!(
            checks(
                &[
                    check("a", JobState::Running { created: at(0) }),
                    check("b", JobState::Running { created: at(-30) })
                ],
                at(10)
            ),
            Checks::Running { until: at(30) }
        );
        assert_eq!(
            checks(
                &[check("slow", JobState::Running { created: at(0) })],
                at(60)
            ),
            Checks::Failed("check slow did not finish within its timeout of 1m".into())
        );
    }
}
