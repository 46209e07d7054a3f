//! Regenerated credentials: the one place a Secret gets fresh values, and the decision of
//! whether a Secret is still what the operator wrote.
//!
//! The operator recognises its own regenerations only by its own record: the uid and
//! resourceVersion its write returned, kept in the status of the cluster-scoped object that
//! made the write (the RecoveryPlan per service, the Incident for its rotations). Labels
//! and annotations on a Secret (`resurgo.dev/plan`, `resurgo.dev/rotated-at`) are written
//! for people and never read for a decision: anyone who may write the Secret may write
//! them. Any write after ours, by anyone, changes the resourceVersion, so a Secret touched
//! since is no longer ours and gets fresh values again.
//!
//! A write replaces the Secret whole: the listed keys get fresh values and no other key,
//! label, annotation or owner reference survives.
//!
//! Crash safety: if the operator stops between the write and the status that records it,
//! the record is lost and the Secret is not recognised; the next start regenerates it once
//! more. Values then change twice, which is safe: nothing trusts the first ones yet.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::{Map, Value, json};

use crate::{api::common::WrittenSecret, labels::FIELD_MANAGER};

/// Whether `secret` is, unchanged, the write `record` describes.
pub fn is_written(record: &WrittenSecret, secret: &ObjectMeta) -> bool {
    secret.namespace.as_deref() == Some(record.namespace.as_str())
        && secret.name.as_deref() == Some(record.name.as_str())
        && secret.uid.as_deref() == Some(record.uid.as_str())
        && secret.resource_version.as_deref() == Some(record.resource_version.as_str())
}

/// The record of `secret`, among `records`, if it is unchanged since the operator wrote it.
pub fn own_write<'a>(
    records: impl IntoIterator<Item = &'a WrittenSecret>,
    secret: &ObjectMeta,
) -> Option<&'a WrittenSecret> {
    records.into_iter().find(|r| is_written(r, secret))
}

/// Whether `secret` is an unchanged write of the operator made after `since` (an incident's
/// `compromisedSince`). A Secret created after it by someone else is not: an attacker with
/// write access can make one as easily as change one.
pub fn fresh_since<'a>(
    records: impl IntoIterator<Item = &'a WrittenSecret>,
    secret: &ObjectMeta,
    since: Timestamp,
) -> bool {
    records
        .into_iter()
        .any(|r| is_written(r, secret) && r.written.0 > since)
}

/// Keeps one record per Secret: `new` replaces an earlier record of the same Secret.
pub fn remember(records: &mut Vec<WrittenSecret>, new: WrittenSecret) {
    records.retain(|r| !(r.namespace == new.namespace && r.name == new.name));
    records.push(new);
}

/// Why an existing Secret cannot be given fresh values in place, if so. Without the right
/// to delete Secrets, the operator cannot replace one whose type or immutability forbid it;
/// it must not use it either, since it may be anyone's.
pub fn refusal(existing: &Secret) -> Option<String> {
    let type_ = existing.type_.as_deref().unwrap_or("Opaque");
    if existing.metadata.deletion_timestamp.is_some() {
        Some("is being deleted: it is given fresh values once it is gone".into())
    } else if existing.immutable == Some(true) {
        Some("is immutable, so it cannot be given fresh values: delete it".into())
    } else if type_ != "Opaque" {
        Some(format!(
            "has type {type_}, not Opaque, so it cannot be given fresh values: delete it"
        ))
    } else {
        None
    }
}

/// The merge patch that turns `existing` into `desired` whole: every key, label and
/// annotation `existing` has that `desired` lacks is removed, and owner references go. The
/// resourceVersion read makes it conditional: a write in between fails it (409) rather than
/// letting a key added meanwhile survive.
pub fn replacement(existing: &Secret, desired: &Secret) -> Value {
    fn whole<V: serde::Serialize>(
        old: Option<&BTreeMap<String, V>>,
        new: Option<&BTreeMap<String, V>>,
    ) -> Value {
        let mut map = Map::new();
        for key in old.into_iter().flat_map(BTreeMap::keys) {
            map.insert(key.clone(), Value::Null);
        }
        for (key, value) in new.into_iter().flatten() {
            map.insert(key.clone(), json!(value));
        }
        Value::Object(map)
    }
    json!({
        "metadata": {
            "resourceVersion": existing.metadata.resource_version,
            "labels": whole(existing.metadata.labels.as_ref(), desired.metadata.labels.as_ref()),
            "annotations": whole(
                existing.metadata.annotations.as_ref(),
                desired.metadata.annotations.as_ref()
            ),
            "ownerReferences": null,
        },
        "data": whole(existing.data.as_ref(), desired.data.as_ref()),
    })
}

/// Writes `desired` (fresh values) in place of `existing`, as read just before: creates it
/// when there is none, replaces it whole otherwise. Returns the record of the write, or why
/// the existing Secret cannot be replaced (see [`refusal`]).
pub async fn write(
    api: &Api<Secret>,
    existing: Option<&Secret>,
    desired: &Secret,
    now: Timestamp,
) -> Result<Result<WrittenSecret, String>, kube::Error> {
    let written = match existing {
        None => {
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..Default::default()
            };
            api.create(&params, desired).await?
        }
        Some(existing) => {
            if let Some(refused) = refusal(existing) {
                return Ok(Err(refused));
            }
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..Default::default()
            };
            api.patch(
                &desired.name_any(),
                &params,
                &Patch::Merge(replacement(existing, desired)),
            )
            .await?
        }
    };
    Ok(Ok(WrittenSecret {
        namespace: written.namespace().unwrap_or_default(),
        name: written.name_any(),
        uid: written.uid().unwrap_or_default(),
        resource_version: written.resource_version().unwrap_or_default(),
        written: Time(now),
    }))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;

    fn record(uid: &str, resource_version: &str, written: i64) -> WrittenSecret {
        WrittenSecret {
            namespace: "dispatch".into(),
            name: "db".into(),
            uid: uid.into(),
            resource_version: resource_version.into(),
            written: Time(Timestamp::from_second(written).unwrap()),
        }
    }

    fn meta(uid: &str, resource_version: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some("dispatch".into()),
            name: Some("db".into()),
            uid: Some(uid.into()),
            resource_version: Some(resource_version.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_secret_is_ours_only_while_uid_and_resource_version_match() {
        let records = [record("u1", "10", 100)];
        assert!(own_write(&records, &meta("u1", "10")).is_some());
        // Changed since (an added key, a label): another resourceVersion.
        assert!(own_write(&records, &meta("u1", "11")).is_none());
        // Deleted and made again under the same name: another uid.
        assert!(own_write(&records, &meta("u2", "10")).is_none());
        let mut elsewhere = meta("u1", "10");
        elsewhere.namespace = Some("other".into());
        assert!(own_write(&records, &elsewhere).is_none());
        // What the object says about itself counts for nothing.
        let mut planted = meta("u3", "12");
        planted.labels = Some(BTreeMap::from([(
            crate::labels::PLAN.to_owned(),
            "plan".to_owned(),
        )]));
        planted.annotations = Some(BTreeMap::from([(
            "resurgo.dev/rotated-at".to_owned(),
            "2999-01-01T00:00:00Z".to_owned(),
        )]));
        assert!(own_write(&records, &planted).is_none());
        assert!(!fresh_since(&records, &planted, Timestamp::UNIX_EPOCH));
        // A Secret without uid or resourceVersion (never read from the server) matches nothing.
        assert!(own_write(&records, &ObjectMeta::default()).is_none());
    }

    #[test]
    fn fresh_means_written_by_us_after_the_compromise() {
        let compromise = Timestamp::from_second(1_000).unwrap();
        let before = [record("u1", "10", 999)];
        let after = [record("u1", "10", 1_001)];
        assert!(!fresh_since(&before, &meta("u1", "10"), compromise));
        assert!(fresh_since(&after, &meta("u1", "10"), compromise));
        assert!(!fresh_since(&after, &meta("u1", "11"), compromise));
        assert!(!fresh_since(&[], &meta("u1", "10"), compromise));
    }

    #[test]
    fn one_record_per_secret() {
        let mut records = vec![record("u1", "10", 1)];
        remember(&mut records, record("u1", "12", 2));
        let mut other = record("u9", "3", 3);
        other.name = "cache".into();
        remember(&mut records, other);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].resource_version, "12");
    }

    #[test]
    fn the_replacement_leaves_nothing_of_anyone_else() {
        let existing = Secret {
            metadata: ObjectMeta {
                resource_version: Some("41".into()),
                labels: Some(BTreeMap::from([
                    ("resurgo.dev/plan".to_owned(), "p".to_owned()),
                    ("attacker".to_owned(), "x".to_owned()),
                ])),
                annotations: Some(BTreeMap::from([(
                    "resurgo.dev/rotated-at".to_owned(),
                    "2999-01-01T00:00:00Z".to_owned(),
                )])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                ("password".to_owned(), ByteString(b"old".to_vec())),
                ("backdoor".to_owned(), ByteString(b"x".to_vec())),
            ])),
            ..Default::default()
        };
        let desired = Secret {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([(
                    "resurgo.dev/plan".to_owned(),
                    "p".to_owned(),
                )])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "password".to_owned(),
                ByteString(b"new".to_vec()),
            )])),
            ..Default::default()
        };
        assert_eq!(
            replacement(&existing, &desired),
            json!({
                "metadata": {
                    "resourceVersion": "41",
                    "labels": {"resurgo.dev/plan": "p", "attacker": null},
                    "annotations": {"resurgo.dev/rotated-at": null},
                    "ownerReferences": null,
                },
                "data": {"password": "bmV3", "backdoor": null},
            })
        );
    }

    #[test]
    fn a_secret_that_cannot_be_changed_in_place_is_refused() {
        let mut secret = Secret::default();
        assert_eq!(refusal(&secret), None);
        secret.type_ = Some("Opaque".into());
        assert_eq!(refusal(&secret), None);
        secret.immutable = Some(true);
        assert!(refusal(&secret).unwrap().contains("immutable"));
        secret.immutable = None;
        secret.type_ = Some("kubernetes.io/service-account-token".into());
        assert!(
            refusal(&secret)
                .unwrap()
                .contains("kubernetes.io/service-account-token")
        );
    }
}
