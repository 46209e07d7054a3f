//! Where a lockdown keeps the bindings it suspends: one immutable Secret per binding in the
//! operator's namespace, holding the binding without its server-set fields. A Secret, not a
//! ConfigMap: who has access to what is not for everyone with `view` on that namespace.
//!
//! Saves carry no owner reference: deleting the policy must not let the garbage collector
//! take them before they are restored (the policy's finalizer restores them first).

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::{
        core::v1::Secret,
        rbac::v1::{ClusterRoleBinding, RoleBinding},
    },
};
use kube::api::ObjectMeta;

use super::lockdown::{Binding, BindingKind, BindingRef};
use crate::labels;

/// `resurgo.dev/part` of a save.
pub const PART: &str = "suspended-binding";
/// The Secret type of a save.
pub const SECRET_TYPE: &str = "resurgo.dev/suspended-binding";
/// The key holding the binding, as JSON.
pub const KEY: &str = "binding.json";
/// Annotation naming the saved binding, for people reading the Secret.
pub const BINDING_ANNOTATION: &str = "resurgo.dev/binding";

/// Name of the save of a binding. Binding names can be long and hold any character but `/`
/// and `%`, so the name is a hash of the binding's kind, namespace and name; the save
/// itself records which binding it holds.
pub fn save_name(binding: &BindingRef) -> String {
    // FNV-1a, 64 bits: stable across versions and platforms, unlike std's hasher.
    let key = format!(
        "{:?}/{}/{}",
        binding.kind,
        binding.namespace.as_deref().unwrap_or(""),
        binding.name
    );
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("suspended-{hash:016x}")
}

/// The save of `binding`, made by `policy`, in `namespace`.
pub fn to_secret(binding: &Binding, policy: &str, namespace: &str) -> Secret {
    let json = serde_json::to_vec(binding).expect("a binding serialises");
    Secret {
        metadata: ObjectMeta {
            name: Some(save_name(&binding.binding)),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (
                    labels::MANAGED_BY_KEY.to_owned(),
                    labels::MANAGED_BY.to_owned(),
                ),
                (labels::ACCESS_POLICY.to_owned(), policy.to_owned()),
                (labels::PART.to_owned(), PART.to_owned()),
            ])),
            annotations: Some(BTreeMap::from([(
                BINDING_ANNOTATION.to_owned(),
                binding.binding.to_string(),
            )])),
            ..Default::default()
        },
        immutable: Some(true),
        type_: Some(SECRET_TYPE.to_owned()),
        data: Some(BTreeMap::from([(KEY.to_owned(), ByteString(json))])),
        ..Default::default()
    }
}

/// The binding a save holds, or `None` when the Secret is not a readable save.
pub fn from_secret(secret: &Secret) -> Option<Binding> {
    let bytes = secret.data.as_ref()?.get(KEY)?;
    serde_json::from_slice(&bytes.0).ok()
}

/// The policy that made a save.
pub fn policy_of(secret: &Secret) -> Option<&str> {
    secret
        .metadata
        .labels
        .as_ref()?
        .get(labels::ACCESS_POLICY)
        .map(String::as_str)
}

fn meta(metadata: &ObjectMeta) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    (
        metadata.labels.clone().unwrap_or_default(),
        metadata.annotations.clone().unwrap_or_default(),
    )
}

/// A RoleBinding as the lockdown sees it.
pub fn from_role_binding(object: &RoleBinding) -> Binding {
    let (labels, annotations) = meta(&object.metadata);
    Binding {
        binding: BindingRef {
            kind: BindingKind::RoleBinding,
            namespace: object.metadata.namespace.clone(),
            name: object.metadata.name.clone().unwrap_or_default(),
        },
        labels,
        annotations,
        owner_references: object.metadata.owner_references.clone().unwrap_or_default(),
        subjects: object.subjects.clone().unwrap_or_default(),
        role_ref: object.role_ref.clone(),
    }
}

/// A ClusterRoleBinding as the lockdown sees it.
pub fn from_cluster_role_binding(object: &ClusterRoleBinding) -> Binding {
    let (labels, annotations) = meta(&object.metadata);
    Binding {
        binding: BindingRef {
            kind: BindingKind::ClusterRoleBinding,
            namespace: None,
            name: object.metadata.name.clone().unwrap_or_default(),
        },
        labels,
        annotations,
        owner_references: object.metadata.owner_references.clone().unwrap_or_default(),
        subjects: object.subjects.clone().unwrap_or_default(),
        role_ref: object.role_ref.clone(),
    }
}

fn metadata_of(binding: &Binding) -> ObjectMeta {
    let non_empty = |map: &BTreeMap<String, String>| (!map.is_empty()).then(|| map.clone());
    ObjectMeta {
        name: Some(binding.binding.name.clone()),
        namespace: binding.binding.namespace.clone(),
        labels: non_empty(&binding.labels),
        annotations: non_empty(&binding.annotations),
        owner_references: (!binding.owner_references.is_empty())
            .then(|| binding.owner_references.clone()),
        ..Default::default()
    }
}

fn subjects_of(binding: &Binding) -> Option<Vec<k8s_openapi::api::rbac::v1::Subject>> {
    (!binding.subjects.is_empty()).then(|| binding.subjects.clone())
}

/// The RoleBinding to create again.
pub fn to_role_binding(binding: &Binding) -> RoleBinding {
    RoleBinding {
        metadata: metadata_of(binding),
        role_ref: binding.role_ref.clone(),
        subjects: subjects_of(binding),
    }
}

/// The ClusterRoleBinding to create again.
pub fn to_cluster_role_binding(binding: &Binding) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: metadata_of(binding),
        role_ref: binding.role_ref.clone(),
        subjects: subjects_of(binding),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::rbac::v1::{RoleRef, Subject};

    use super::*;

    #[test]
    fn a_save_holds_the_binding_exactly() {
        let original = RoleBinding {
            metadata: ObjectMeta {
                name: Some("alice-view".into()),
                namespace: Some("radiology".into()),
                labels: Some(BTreeMap::from([("team".into(), "pacs".into())])),
                annotations: Some(BTreeMap::from([("ticket".into(), "IT-1".into())])),
                uid: Some("server-set".into()),
                resource_version: Some("42".into()),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: "view".into(),
            },
            subjects: Some(vec![Subject {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "User".into(),
                name: "alice".into(),
                namespace: None,
            }]),
        };
        let binding = from_role_binding(&original);
        let secret = to_secret(&binding, "lazio-access", "resurgo-system");
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some(save_name(&binding.binding).as_str())
        );
        assert_eq!(policy_of(&secret), Some("lazio-access"));
        let back = from_secret(&secret).expect("readable");
        assert_eq!(back, binding);
        let restored = to_role_binding(&back);
        assert_eq!(restored.subjects, original.subjects);
        assert_eq!(restored.role_ref, original.role_ref);
        assert_eq!(restored.metadata.labels, original.metadata.labels);
        assert_eq!(restored.metadata.annotations, original.metadata.annotations);
        assert_eq!(
            restored.metadata.uid, None,
            "server-set fields are not restored"
        );
    }

    #[test]
    fn save_names_differ_by_kind_namespace_and_name() {
        let r = |kind, namespace: Option<&str>, name: &str| BindingRef {
            kind,
            namespace: namespace.map(Into::into),
            name: name.into(),
        };
        let names = [
            save_name(&r(BindingKind::RoleBinding, Some("a"), "b")),
            save_name(&r(BindingKind::RoleBinding, Some("b"), "a")),
            save_name(&r(BindingKind::ClusterRoleBinding, None, "b")),
            save_name(&r(BindingKind::RoleBinding, Some("a"), "system:weird:Name")),
        ];
        let distinct: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), names.len());
        assert!(names.iter().all(|n| n.len() == "suspended-".len() + 16));
    }
}
