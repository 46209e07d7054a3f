//! The lockdown ledger's entries: one cluster-scoped SuspendedBinding per binding a
//! lockdown took away, holding the binding without its server-set fields. Cluster-scoped so
//! that a namespace admin can neither forge an entry (which would be restored as it says)
//! nor delete one (which would lose a binding): only the operator and cluster admins write
//! them.
//!
//! Entries carry no owner reference: deleting a policy must not let the garbage collector
//! take them before they are restored.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::rbac::v1::{ClusterRoleBinding, RoleBinding},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::api::ObjectMeta;

use super::lockdown::{Binding, BindingKind, BindingRef, Entry};
use crate::{
    api::suspended_binding::{
        SavedBinding, SavedBindingKind, SuspendedBinding, SuspendedBindingSpec,
    },
    labels,
};

/// Annotation naming the saved binding, for people reading the entry.
pub const BINDING_ANNOTATION: &str = "resurgo.dev/binding";

/// Name of the entry of a binding. Binding names can be long and hold any character but `/`
/// and `%`, so the name is a hash of the binding's kind, namespace and name; the entry
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

/// The ledger entry of `entry`, with the binding's uid when it was saved.
pub fn to_object(entry: &Entry, uid: Option<String>) -> SuspendedBinding {
    let b = &entry.binding;
    let mut object = SuspendedBinding::new(
        &save_name(&b.binding),
        SuspendedBindingSpec {
            binding: SavedBinding {
                kind: match b.binding.kind {
                    BindingKind::RoleBinding => SavedBindingKind::RoleBinding,
                    BindingKind::ClusterRoleBinding => SavedBindingKind::ClusterRoleBinding,
                },
                namespace: b.binding.namespace.clone(),
                name: b.binding.name.clone(),
                labels: b.labels.clone(),
                annotations: b.annotations.clone(),
                owner_references: b.owner_references.clone(),
                subjects: b.subjects.clone(),
                role_ref: b.role_ref.clone(),
            },
            policy: entry.policy.clone(),
            uid,
            created: entry.created.map(Time),
            suspended_at: Time(entry.suspended_at),
            held_after_lockdown: entry.held,
            release: entry.release,
        },
    );
    object.metadata.labels = Some(BTreeMap::from([(
        labels::MANAGED_BY_KEY.to_owned(),
        labels::MANAGED_BY.to_owned(),
    )]));
    object.metadata.annotations = Some(BTreeMap::from([(
        BINDING_ANNOTATION.to_owned(),
        b.binding.to_string(),
    )]));
    object
}

/// The entry a SuspendedBinding holds, or `None` when its name is not the one its binding
/// would be saved under (an entry is looked up by that name: one under another name would
/// be a second save of the same binding).
pub fn from_object(object: &SuspendedBinding) -> Option<Entry> {
    let saved = &object.spec.binding;
    let binding = Binding {
        binding: BindingRef {
            kind: match saved.kind {
                SavedBindingKind::RoleBinding => BindingKind::RoleBinding,
                SavedBindingKind::ClusterRoleBinding => BindingKind::ClusterRoleBinding,
            },
            namespace: saved.namespace.clone(),
            name: saved.name.clone(),
        },
        labels: saved.labels.clone(),
        annotations: saved.annotations.clone(),
        owner_references: saved.owner_references.clone(),
        subjects: saved.subjects.clone(),
        role_ref: saved.role_ref.clone(),
    };
    if object.metadata.name.as_deref() != Some(save_name(&binding.binding).as_str()) {
        return None;
    }
    Some(Entry {
        binding,
        policy: object.spec.policy.clone(),
        created: object.spec.created.as_ref().map(|t| t.0),
        suspended_at: object.spec.suspended_at.0,
        held: object.spec.held_after_lockdown,
        release: object.spec.release,
    })
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
        let entry = Entry {
            binding: binding.clone(),
            policy: "lazio-access".into(),
            created: Some("2026-01-01T00:00:00Z".parse().unwrap()),
            suspended_at: "2026-02-01T00:00:00Z".parse().unwrap(),
            held: true,
            release: false,
        };
        let object = to_object(&entry, Some("uid-1".into()));
        assert_eq!(
            object.metadata.name.as_deref(),
            Some(save_name(&binding.binding).as_str())
        );
        let back = from_object(&object).expect("readable");
        assert_eq!(back, entry);
        let restored = to_role_binding(&back.binding);
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
    fn an_entry_under_another_name_is_not_read() {
        let binding = from_role_binding(&RoleBinding {
            metadata: ObjectMeta {
                name: Some("b".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            ..Default::default()
        });
        let entry = Entry {
            binding,
            policy: "p".into(),
            created: None,
            suspended_at: "2026-02-01T00:00:00Z".parse().unwrap(),
            held: false,
            release: false,
        };
        let mut object = to_object(&entry, None);
        object.metadata.name = Some("suspended-0000000000000000".into());
        assert_eq!(from_object(&object), None);
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
