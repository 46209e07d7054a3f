//! The objects a service's rebuild creates, built from the plan alone: its namespace
//! (hardened), the NetworkPolicies that let it reach only what it depends on, regenerated
//! Secrets, restore and check Jobs, and its workload manifests, each labelled as ours.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    ByteString,
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::{Namespace, Secret},
        networking::v1::{
            NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
            NetworkPolicyPort, NetworkPolicySpec,
        },
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use kube::api::ObjectMeta;
use serde_json::Value;

use crate::{
    api::{
        common::JobTemplate,
        recovery_plan::{RecoveryPlanSpec, RegeneratedSecret, Service},
    },
    labels,
};

/// Labels on everything made for `service` of `plan`.
pub fn service_labels(plan: &str, service: &str, part: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_owned(),
            labels::MANAGED_BY.to_owned(),
        ),
        (labels::PLAN.to_owned(), plan.to_owned()),
        (labels::SERVICE.to_owned(), service.to_owned()),
        (labels::PART.to_owned(), part.to_owned()),
    ])
}

/// The service's namespace, enforcing the Pod Security `restricted` level: what is rebuilt
/// after a compromise runs with the least privilege Kubernetes can enforce.
pub fn namespace(name: &str, plan: &str) -> Namespace {
    let mut labels = BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_owned(),
            labels::MANAGED_BY.to_owned(),
        ),
        (labels::PLAN.to_owned(), plan.to_owned()),
    ]);
    for mode in ["enforce", "audit", "warn"] {
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}"),
            "restricted".to_owned(),
        );
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}-version"),
            "latest".to_owned(),
        );
    }
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Name of the policy that denies all traffic in a service namespace.
pub const DEFAULT_DENY: &str = "resurgo-default-deny";
/// Name of the policy that opens exactly the declared dependencies.
pub const ALLOW_DEPENDENCIES: &str = "resurgo-allow-dependencies";

/// Default-deny for the namespace, plus one policy that lets its pods reach the namespaces
/// of the services they depend on (and DNS), and be reached from the namespaces of the
/// services that depend on them. Several services may share a namespace: the rules cover
/// all of them.
pub fn network_policies(
    spec: &RecoveryPlanSpec,
    plan: &str,
    namespace: &str,
) -> [NetworkPolicy; 2] {
    let namespace_of: BTreeMap<&str, &str> = spec
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.namespace.as_str()))
        .collect();
    let here: Vec<&Service> = spec
        .services
        .iter()
        .filter(|s| s.namespace == namespace)
        .collect();
    let here_names: BTreeSet<&str> = here.iter().map(|s| s.name.as_str()).collect();

    let reaches: BTreeSet<&str> = here
        .iter()
        .flat_map(|s| s.depends_on.iter())
        .filter_map(|d| namespace_of.get(d.as_str()).copied())
        .filter(|ns| *ns != namespace)
        .collect();
    let reached_from: BTreeSet<&str> = spec
        .services
        .iter()
        .filter(|s| s.depends_on.iter().any(|d| here_names.contains(d.as_str())))
        .map(|s| s.namespace.as_str())
        .filter(|ns| *ns != namespace)
        .collect();

    let peer = |ns: &str| NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                ns.to_owned(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Pods of the same namespace may talk to each other, and every pod may resolve names.
    let same_namespace = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..Default::default()
    };
    let dns = NetworkPolicyEgressRule {
        to: Some(vec![peer("kube-system")]),
        ports: Some(
            ["UDP", "TCP"]
                .into_iter()
                .map(|protocol| NetworkPolicyPort {
                    protocol: Some(protocol.to_owned()),
                    port: Some(IntOrString::Int(53)),
                    ..Default::default()
                })
                .collect(),
        ),
    };
    let mut egress_to = vec![same_namespace.clone()];
    egress_to.extend(reaches.iter().map(|ns| peer(ns)));
    let mut ingress_from = vec![same_namespace];
    ingress_from.extend(reached_from.iter().map(|ns| peer(ns)));

    let meta = |name: &str| ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(BTreeMap::from([
            (
                "app.kubernetes.io/managed-by".to_owned(),
                labels::MANAGED_BY.to_owned(),
            ),
            (labels::PLAN.to_owned(), plan.to_owned()),
            (labels::PART.to_owned(), "network-policy".to_owned()),
        ])),
        ..Default::default()
    };
    let both = Some(vec!["Ingress".to_owned(), "Egress".to_owned()]);
    [
        NetworkPolicy {
            metadata: meta(DEFAULT_DENY),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector::default()),
                policy_types: both.clone(),
                ..Default::default()
            }),
        },
        NetworkPolicy {
            metadata: meta(ALLOW_DEPENDENCIES),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector::default()),
                policy_types: both,
                egress: Some(vec![
                    NetworkPolicyEgressRule {
                        to: Some(egress_to),
                        ports: None,
                    },
                    dns,
                ]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(ingress_from),
                    ports: None,
                }]),
            }),
        },
    ]
}

/// A Secret with a fresh random value for every key: credentials are changed after a
/// compromise, never restored. `random` fills a buffer with secure random bytes.
pub fn regenerated_secret(
    secret: &RegeneratedSecret,
    namespace: &str,
    plan: &str,
    service: &str,
    mut random: impl FnMut(&mut [u8]),
) -> Secret {
    let length = secret.length.unwrap_or(32) as usize;
    let data = secret
        .keys
        .iter()
        .map(|key| {
            let mut bytes = vec![0u8; length];
            random(&mut bytes);
            // Printable values: most applications read credentials as text.
            (key.clone(), ByteString(hex(&bytes).into_bytes()))
        })
        .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(secret.name.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(service_labels(plan, service, "secret")),
            ..Default::default()
        },
        data: Some(data),
        type_: Some("Opaque".to_owned()),
        ..Default::default()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The name of a Job the operator runs for a service: `<service>-<template>`, shortened
/// with a hash when longer than a Kubernetes name may be.
pub fn job_name(service: &str, template: &str) -> String {
    let name = format!("{service}-{template}");
    if name.len() <= 63 {
        return name;
    }
    // FNV-1a: stable across versions and platforms, unlike std's hasher.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{}-{:08x}", &name[..54].trim_end_matches('-'), hash as u32)
}

/// A restore or check Job of a service.
pub fn job(
    template: &JobTemplate,
    namespace: &str,
    plan: &str,
    service: &str,
    part: &str,
) -> Result<Job, serde_json::Error> {
    let spec: JobSpec = serde_json::from_value(template.spec.clone())?;
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name(service, &template.name)),
            namespace: Some(namespace.to_owned()),
            labels: Some(service_labels(plan, service, part)),
            ..Default::default()
        },
        spec: Some(spec),
        ..Default::default()
    })
}

/// One of a service's manifests as it is applied: in the service's namespace, with our
/// labels added to its own.
pub fn workload_object(manifest: &Value, namespace: &str, plan: &str, service: &str) -> Value {
    let mut object = manifest.clone();
    let metadata = object.as_object_mut().map(|o| {
        o.entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()))
    });
    if let Some(Value::Object(metadata)) = metadata {
        metadata.insert("namespace".to_owned(), Value::String(namespace.to_owned()));
        let labels = metadata
            .entry("labels")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(labels) = labels {
            for (key, value) in service_labels(plan, service, "workload") {
                labels.insert(key, Value::String(value));
            }
        }
    }
    object
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec() -> RecoveryPlanSpec {
        serde_json::from_value(json!({
            "tiers": [{"name": "t", "rto": "1h"}],
            "services": [
                {"name": "db", "tier": "t", "namespace": "data", "workload": {"manifests": []}},
                {"name": "api", "tier": "t", "namespace": "web", "dependsOn": ["db"], "workload": {"manifests": []}},
                {"name": "ui", "tier": "t", "namespace": "web", "dependsOn": ["api"], "workload": {"manifests": []}}
            ]
        }))
        .unwrap()
    }

    fn namespaces_in(peers: &[NetworkPolicyPeer]) -> Vec<String> {
        peers
            .iter()
            .filter_map(|p| p.namespace_selector.as_ref())
            .map(|s| s.match_labels.as_ref().unwrap()["kubernetes.io/metadata.name"].clone())
            .collect()
    }

    #[test]
    fn a_service_reaches_only_what_it_depends_on() {
        let [deny, allow] = network_policies(&spec(), "p", "web");
        assert_eq!(
            deny.spec.unwrap().policy_types.unwrap(),
            ["Ingress", "Egress"]
        );
        let allow = allow.spec.unwrap();
        let egress = allow.egress.unwrap();
        assert_eq!(namespaces_in(egress[0].to.as_ref().unwrap()), ["data"]);
        // Nothing depends on web from another namespace: only its own pods reach it.
        assert!(namespaces_in(allow.ingress.unwrap()[0].from.as_ref().unwrap()).is_empty());

        let [_, allow] = network_policies(&spec(), "p", "data");
        let allow = allow.spec.unwrap();
        assert!(namespaces_in(allow.egress.unwrap()[0].to.as_ref().unwrap()).is_empty());
        assert_eq!(
            namespaces_in(allow.ingress.unwrap()[0].from.as_ref().unwrap()),
            ["web"]
        );
    }

    #[test]
    fn service_namespaces_enforce_the_restricted_pod_security_level() {
        let labels = namespace("dispatch-118", "p").metadata.labels.unwrap();
        assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
    }

    #[test]
    fn regenerated_secrets_take_fresh_values_for_every_key() {
        let wanted = RegeneratedSecret {
            name: "db".into(),
            keys: vec!["user".into(), "password".into()],
            length: Some(16),
        };
        let mut counter = 0u8;
        let secret = regenerated_secret(&wanted, "ns", "p", "svc", |buf| {
            counter += 1;
            buf.fill(counter);
        });
        let data = secret.data.unwrap();
        assert_eq!(data["user"].0.len(), 32, "16 bytes, hex encoded");
        assert_ne!(
            data["user"], data["password"],
            "every key gets its own value"
        );
    }

    #[test]
    fn job_names_fit_kubernetes_limits_and_stay_distinct() {
        assert_eq!(
            job_name("radiology", "restore-data"),
            "radiology-restore-data"
        );
        let long = "a".repeat(63);
        let one = job_name(&long, "restore-data");
        let two = job_name(&long, "checks");
        assert!(one.len() <= 63 && two.len() <= 63);
        assert_ne!(one, two);
    }

    #[test]
    fn workload_objects_are_moved_into_the_service_namespace_and_labelled() {
        let manifest = json!({"apiVersion": "v1", "kind": "ConfigMap",
                              "metadata": {"name": "c", "namespace": "elsewhere", "labels": {"app": "x"}}});
        let object = workload_object(&manifest, "ns", "p", "svc");
        assert_eq!(object["metadata"]["namespace"], "ns");
        assert_eq!(object["metadata"]["labels"]["app"], "x");
        assert_eq!(object["metadata"]["labels"][labels::SERVICE], "svc");
    }
}
