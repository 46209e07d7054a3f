//! What a backup reads and how each object is cleaned before it is written. Pure.
//!
//! Left out: kinds that their owners or the cluster recreate (Events, Pods, ReplicaSets,
//! Endpoints, EndpointSlices, Leases, ControllerRevisions), objects owned by a controller
//! (an ownerReference with `controller: true`), ServiceAccount token Secrets, the
//! `kube-root-ca.crt` ConfigMap and the `default` ServiceAccount that every namespace gets.
//!
//! Cleaned away: every field the API server sets (uid, resourceVersion, generation,
//! creationTimestamp, managedFields, selfLink, deletion fields, status), ownerReferences
//! (they name uids of the old cluster: the garbage collector would delete the restored
//! object), `kubectl.kubernetes.io/last-applied-configuration`, a Service's allocated cluster
//! IPs and health-check node port, a PersistentVolumeClaim's bound volume, and the
//! controller-uid selector and labels of a Job.

use serde_json::{Map, Value};

/// Kinds never backed up, whatever the selection says.
pub const BUILT_IN_EXCLUDES: &[&str] = &[
    "Event",
    "Pod",
    "ReplicaSet",
    "Endpoints",
    "EndpointSlice",
    "Lease",
    "ControllerRevision",
    "PodMetrics",
];

/// Whether the objects of `kind` are read at all.
pub fn kind_wanted(kind: &str, include_kinds: &[String], exclude_kinds: &[String]) -> bool {
    if BUILT_IN_EXCLUDES.contains(&kind) || exclude_kinds.iter().any(|k| k == kind) {
        return false;
    }
    include_kinds.is_empty() || include_kinds.iter().any(|k| k == kind)
}

/// Whether one object read from the cluster goes into the backup.
pub fn object_wanted(object: &Value) -> bool {
    let metadata = &object["metadata"];
    let controlled = metadata["ownerReferences"]
        .as_array()
        .is_some_and(|owners| owners.iter().any(|o| o["controller"] == Value::Bool(true)));
    if controlled {
        return false;
    }
    let kind = object["kind"].as_str().unwrap_or_default();
    let name = metadata["name"].as_str().unwrap_or_default();
    match kind {
        "Secret" => object["type"] != "kubernetes.io/service-account-token",
        "ConfigMap" => name != "kube-root-ca.crt",
        "ServiceAccount" => name != "default",
        _ => true,
    }
}

const SERVER_SET_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "ownerReferences",
];

const SERVER_SET_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.kubernetes.io/selected-node",
];

/// The object without what the API server or controllers set, so that it applies cleanly
/// to another cluster.
pub fn clean(mut object: Value) -> Value {
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    let Some(top) = object.as_object_mut() else {
        return object;
    };
    top.remove("status");
    if let Some(Value::Object(metadata)) = top.get_mut("metadata") {
        for field in SERVER_SET_METADATA {
            metadata.remove(*field);
        }
        remove_keys(metadata, "annotations", SERVER_SET_ANNOTATIONS);
    }
    let spec = match top.get_mut("spec") {
        Some(Value::Object(spec)) => spec,
        _ => return object,
    };
    match kind.as_str() {
        "Service" => {
            let headless = spec.get("clusterIP") == Some(&Value::String("None".into()));
            if !headless {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            spec.remove("healthCheckNodePort");
        }
        "PersistentVolumeClaim" => {
            spec.remove("volumeName");
        }
        "Job" => {
            const JOB_LABELS: &[&str] = &[
                "controller-uid",
                "batch.kubernetes.io/controller-uid",
                "job-name",
                "batch.kubernetes.io/job-name",
            ];
            spec.remove("selector");
            if let Some(Value::Object(template)) = spec.get_mut("template")
                && let Some(Value::Object(metadata)) = template.get_mut("metadata")
            {
                remove_keys(metadata, "labels", JOB_LABELS);
            }
            if let Some(Value::Object(metadata)) = top.get_mut("metadata") {
                remove_keys(metadata, "labels", JOB_LABELS);
            }
        }
        _ => {}
    }
    object
}

fn remove_keys(metadata: &mut Map<String, Value>, field: &str, keys: &[&str]) {
    if let Some(Value::Object(map)) = metadata.get_mut(field) {
        for key in keys {
            map.remove(*key);
        }
        if map.is_empty() {
            metadata.remove(field);
        }
    }
}

/// Order of kinds in a restore: what others refer to first (accounts, secrets, config,
/// claims, services, RBAC), the workloads after. Unknown kinds in between.
pub fn restore_rank(kind: &str) -> u8 {
    match kind {
        "ServiceAccount" => 0,
        "Secret" => 1,
        "ConfigMap" => 2,
        "PersistentVolumeClaim" => 3,
        "Role" | "RoleBinding" => 4,
        "Service" => 5,
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" | "CronJob" => 9,
        _ => 6,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn server_set_fields_are_cleaned_and_the_users_kept() {
        let object = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {
                "name": "web", "namespace": "n", "uid": "u", "resourceVersion": "7",
                "generation": 2, "creationTimestamp": "2026-01-01T00:00:00Z",
                "managedFields": [{}], "labels": {"app": "web"},
                "ownerReferences": [{"kind": "X", "name": "x", "uid": "u2"}],
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "team": "a"}
            },
            "spec": {"clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"], "ports": [{"port": 80}]},
            "status": {"loadBalancer": {}}
        });
        assert_eq!(
            clean(object),
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "n", "labels": {"app": "web"}, "annotations": {"team": "a"}},
                "spec": {"ports": [{"port": 80}]}
            })
        );
    }

    #[test]
    fn a_headless_service_stays_headless() {
        let object = json!({"kind": "Service", "metadata": {"name": "h"}, "spec": {"clusterIP": "None", "clusterIPs": ["None"]}});
        assert_eq!(clean(object.clone()), object);
    }

    #[test]
    fn a_jobs_generated_selector_and_labels_go() {
        let object = json!({
            "kind": "Job", "metadata": {"name": "j", "labels": {"job-name": "j", "team": "a"}},
            "spec": {"selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}},
                     "template": {"metadata": {"labels": {"batch.kubernetes.io/controller-uid": "u", "controller-uid": "u", "job-name": "j", "batch.kubernetes.io/job-name": "j"}}, "spec": {}}}
        });
        assert_eq!(
            clean(object),
            json!({"kind": "Job", "metadata": {"name": "j", "labels": {"team": "a"}}, "spec": {"template": {"metadata": {}, "spec": {}}}})
        );
    }

    #[test]
    fn controller_owned_and_cluster_made_objects_are_left_out() {
        let owned = json!({"kind": "ConfigMap", "metadata": {"name": "c", "ownerReferences": [{"controller": true}]}});
        let referenced = json!({"kind": "ConfigMap", "metadata": {"name": "c", "ownerReferences": [{"controller": false}]}});
        let token = json!({"kind": "Secret", "type": "kubernetes.io/service-account-token", "metadata": {"name": "t"}});
        let root_ca = json!({"kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt"}});
        let default_account = json!({"kind": "ServiceAccount", "metadata": {"name": "default"}});
        assert!(!object_wanted(&owned));
        assert!(object_wanted(&referenced));
        assert!(!object_wanted(&token));
        assert!(!object_wanted(&root_ca));
        assert!(!object_wanted(&default_account));
    }

    #[test]
    fn kinds_follow_include_then_exclude_and_built_ins_always_go() {
        let none: Vec<String> = vec![];
        assert!(kind_wanted("Deployment", &none, &none));
        assert!(!kind_wanted("Pod", &["Pod".into()], &none));
        assert!(!kind_wanted("Event", &none, &none));
        assert!(!kind_wanted("Secret", &none, &["Secret".into()]));
        assert!(!kind_wanted("Secret", &["ConfigMap".into()], &none));
        assert!(kind_wanted("ConfigMap", &["ConfigMap".into()], &none));
    }
}
