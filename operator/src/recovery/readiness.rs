//! When an object counts as ready, read from its status the way kstatus and `kubectl
//! rollout status` read it: the controller must have seen the current generation, every
//! replica must be updated and available, a Job must have completed.

use serde_json::Value;

/// How far an object is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Not ready yet; the text says what it waits for.
    Progressing(String),
    /// It will not become ready by itself.
    Failed(String),
}

/// Readiness of any object. Kinds without a notion of readiness are ready once they exist.
pub fn of(object: &Value) -> Readiness {
    let kind = object["kind"].as_str().unwrap_or_default();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    match kind {
        "Deployment" => replicas_ready(object, name, "availableReplicas"),
        "StatefulSet" => replicas_ready(object, name, "readyReplicas"),
        "DaemonSet" => daemon_set(object, name),
        "Job" => job(object, name),
        _ => Readiness::Ready,
    }
}

fn generation_seen(object: &Value) -> bool {
    let generation = object["metadata"]["generation"].as_i64().unwrap_or(0);
    let observed = object["status"]["observedGeneration"].as_i64().unwrap_or(0);
    observed >= generation
}

fn count(object: &Value, field: &str) -> i64 {
    object["status"][field].as_i64().unwrap_or(0)
}

fn replicas_ready(object: &Value, name: &str, ready_field: &str) -> Readiness {
    let kind = object["kind"].as_str().unwrap_or_default();
    if !generation_seen(object) {
        return Readiness::Progressing(format!(
            "{kind} {name}: the controller has not seen the latest spec"
        ));
    }
    let wanted = object["spec"]["replicas"].as_i64().unwrap_or(1);
    let updated = count(object, "updatedReplicas");
    let ready = count(object, ready_field);
    if updated < wanted || ready < wanted {
        return Readiness::Progressing(format!(
            "{kind} {name}: {ready}/{wanted} ready, {updated}/{wanted} updated"
        ));
    }
    if kind == "Deployment" {
        if let Some(message) = condition(object, "Progressing")
            .filter(|c| c["reason"] == "ProgressDeadlineExceeded")
            .map(|c| c["message"].as_str().unwrap_or_default().to_owned())
        {
            return Readiness::Failed(format!("Deployment {name}: {message}"));
        }
        if condition(object, "Available").is_none_or(|c| c["status"] != "True") {
            return Readiness::Progressing(format!("Deployment {name}: not Available yet"));
        }
    }
    Readiness::Ready
}

fn daemon_set(object: &Value, name: &str) -> Readiness {
    if !generation_seen(object) {
        return Readiness::Progressing(format!(
            "DaemonSet {name}: the controller has not seen the latest spec"
        ));
    }
    let wanted = count(object, "desiredNumberScheduled");
    let available = count(object, "numberAvailable");
    let updated = count(object, "updatedNumberScheduled");
    if available < wanted || updated < wanted {
        return Readiness::Progressing(format!(
            "DaemonSet {name}: {available}/{wanted} available, {updated}/{wanted} updated"
        ));
    }
    Readiness::Ready
}

fn job(object: &Value, name: &str) -> Readiness {
    if condition(object, "Complete").is_some_and(|c| c["status"] == "True") {
        return Readiness::Ready;
    }
    if let Some(failed) = condition(object, "Failed").filter(|c| c["status"] == "True") {
        let why = failed["message"]
            .as_str()
            .or(failed["reason"].as_str())
            .unwrap_or("failed");
        return Readiness::Failed(format!("Job {name}: {why}"));
    }
    Readiness::Progressing(format!("Job {name}: not complete yet"))
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment(
        generation: i64,
        observed: i64,
        replicas: i64,
        updated: i64,
        available: i64,
        available_condition: &str,
    ) -> Value {
        json!({
            "kind": "Deployment", "metadata": {"name": "d", "generation": generation},
            "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "updatedReplicas": updated, "availableReplicas": available,
                       "conditions": [{"type": "Available", "status": available_condition}]}
        })
    }

    #[test]
    fn a_deployment_is_ready_when_every_replica_is_updated_and_available() {
        assert_eq!(of(&deployment(2, 2, 3, 3, 3, "True")), Readiness::Ready);
    }

    #[test]
    fn a_deployment_is_not_ready_while_its_controller_lags_or_replicas_are_missing() {
        assert!(matches!(
            of(&deployment(3, 2, 3, 3, 3, "True")),
            Readiness::Progressing(_)
        ));
        assert!(matches!(
            of(&deployment(1, 1, 3, 2, 3, "True")),
            Readiness::Progressing(_)
        ));
        assert!(matches!(
            of(&deployment(1, 1, 3, 3, 2, "True")),
            Readiness::Progressing(_)
        ));
        assert!(matches!(
            of(&deployment(1, 1, 3, 3, 3, "False")),
            Readiness::Progressing(_)
        ));
    }

    #[test]
    fn a_stuck_rollout_is_a_failure() {
        let mut d = deployment(1, 1, 1, 0, 0, "False");
        d["status"]["conditions"] = json!([{"type": "Progressing", "status": "False",
            "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet d-1 has timed out progressing."}]);
        d["status"]["updatedReplicas"] = json!(1);
        d["status"]["availableReplicas"] = json!(1);
        assert!(matches!(of(&d), Readiness::Failed(m) if m.contains("timed out progressing")));
    }

    #[test]
    fn a_job_is_ready_when_complete_and_failed_when_failed() {
        let job = |kind: &str| {
            json!({"kind": "Job", "metadata": {"name": "j"},
            "status": {"conditions": [{"type": kind, "status": "True", "message": "BackoffLimitExceeded"}]}})
        };
        assert_eq!(of(&job("Complete")), Readiness::Ready);
        assert!(
            matches!(of(&job("Failed")), Readiness::Failed(m) if m.contains("BackoffLimitExceeded"))
        );
        assert!(matches!(
            of(&json!({"kind": "Job", "metadata": {"name": "j"}})),
            Readiness::Progressing(_)
        ));
    }

    #[test]
    fn objects_without_readiness_are_ready_once_they_exist() {
        assert_eq!(
            of(&json!({"kind": "ConfigMap", "metadata": {"name": "c"}})),
            Readiness::Ready
        );
    }
}
