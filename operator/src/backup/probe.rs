//! The BackupStore controller: probes each store when the operator starts and whenever its
//! spec changes, and reports whether it is reachable, locked (WORM), and out of reach of the
//! operator's own credentials.
//!
//! The probe writes `probes/<store>-<generation>` and then tries to overwrite and delete it:
//! if either works, an attacker holding the operator's credentials could destroy backups.
//! In a versioned S3 bucket an overwrite or a delete only adds a version or a delete marker,
//! so there the probe tries to delete the probe object's version, which object lock refuses.
//! Object lock is read from the bucket's configuration; a filesystem never locks.
//!
//! The probe fails closed: a delete counts as refused only when the store refused that
//! delete (see [`super::s3_answer`]). A signature or credential error, a missing bucket or
//! a call that timed out makes the store unreachable, with the S3 error code (or `Timeout`)
//! as the condition's reason, and never reads as "the credentials cannot delete".

use crate::operator::Shared;
use std::{collections::BTreeSet, sync::Arc, sync::Mutex, time::Duration};

use futures::StreamExt;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;
use tracing::{info, warn};

use super::{
    Error, conditions, engine, kube_error,
    s3::{self, S3Failure},
    s3_answer::DeleteAnswer,
    store::{self, Deletion, Unreachable},
};
use crate::{
    api::backup_store::{BackupStore, BackupStoreSpec, BackupStoreStatus, ObjectLock, StoreType},
    labels::FIELD_MANAGER,
};

pub struct Context {
    client: Client,
    /// (uid, generation) probed by this process.
    probed: Mutex<BTreeSet<(String, i64)>>,
}

/// Runs the controller until the operator stops.
pub async fn run(shared: Shared) {
    let client = shared.client.clone();
    shared.kind_listed(Api::<BackupStore>::all(client.clone()));
    let metrics = shared.metrics.clone();
    let context = Arc::new(Context {
        client: client.clone(),
        probed: Mutex::default(),
    });
    shared
        .controller(Api::<BackupStore>::all(client))
        .trigger_backoff(crate::operator::TriggerBackoff::default())
        .graceful_shutdown_on(shared.shutdown())
        .run(reconcile, error_policy, context)
        .for_each(|result| {
            match result {
                Ok(_) => metrics.reconciled("BackupStore"),
                Err(error) => {
                    metrics.reconcile_failed("BackupStore");
                    warn!(%error, "store reconcile failed");
                }
            }
            futures::future::ready(())
        })
        .await;
}

fn error_policy(store: Arc<BackupStore>, error: &Error, _: Arc<Context>) -> Action {
    warn!(store = %store.name_any(), %error, "will retry");
    Action::requeue(Duration::from_secs(10))
}

async fn reconcile(object: Arc<BackupStore>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = object.name_any();
    let generation = object.metadata.generation.unwrap_or_default();
    let key = (object.uid().unwrap_or_default(), generation);
    if ctx.probed.lock().expect("not poisoned").contains(&key) {
        return Ok(Action::await_change());
    }
    let previous = object.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let store_type = if object.spec.filesystem.is_some() {
        StoreType::Filesystem
    } else {
        StoreType::S3
    };
    let credentials = engine::credentials(&ctx.client, &object.spec)
        .await
        .map_err(kube_error(
            "read credentials of",
            format!("BackupStore {name}"),
        ))?;
    let probe_name = format!("{name}-{generation}");
    let findings = match credentials {
        Err(failure) => Findings::unreachable("Unreachable", failure),
        Ok(credentials) => probe_store(&object.spec, credentials, &probe_name).await,
    };
    let (wanted, reachable) = status_of(store_type, &findings);
    let status = BackupStoreStatus {
        observed_generation: Some(generation),
        store_type: Some(store_type),
        conditions: conditions(
            &previous.conditions,
            Some(generation),
            now,
            &wanted
                .iter()
                .map(|(type_, ok, reason, message)| (*type_, *ok, reason.as_str(), message.clone()))
                .collect::<Vec<_>>(),
        ),
        object_lock: findings.lock.clone().ok().flatten(),
        credentials_can_delete: findings.can_delete(),
        last_probed: Some(Time(now)),
    };
    info!(store = %name, reachable, can_delete = ?findings.can_delete(), "store probed");
    let patch =
        json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "BackupStore", "status": status});
    Api::<BackupStore>::all(ctx.client.clone())
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(kube_error("write status of", format!("BackupStore {name}")))?;
    ctx.probed.lock().expect("not poisoned").insert(key);
    Ok(Action::await_change())
}

/// Everything one probe found, before it becomes a status.
#[derive(Debug)]
struct Findings {
    reachable: Result<(), Unreachable>,
    deletion: Deletion,
    /// The bucket's object lock (`None`: none, or not S3), or why it could not be read.
    lock: Result<Option<ObjectLock>, S3Failure>,
}

impl Findings {
    fn unreachable(reason: &str, message: String) -> Self {
        Findings::from_probe(store::Probe {
            reachable: Err(Unreachable {
                reason: reason.to_owned(),
                message,
            }),
            deletion: Deletion::Unknown {
                reason: reason.to_owned(),
                message: "the store could not be probed".to_owned(),
            },
        })
    }

    fn from_probe(probe: store::Probe) -> Self {
        Findings {
            reachable: probe.reachable,
            deletion: probe.deletion,
            lock: Ok(None),
        }
    }

    /// What `credentialsCanDelete` says: only what was found out, never a guess.
    fn can_delete(&self) -> Option<bool> {
        match (&self.reachable, &self.deletion) {
            (Err(_), _) | (_, Deletion::Unknown { .. }) => None,
            (Ok(()), Deletion::Possible) => Some(true),
            (Ok(()), Deletion::Refused { .. }) => Some(false),
        }
    }

    /// The first failure that makes the store unusable wins: it is what to fix first.
    fn fail(&mut self, failure: S3Failure) {
        if self.reachable.is_ok() {
            self.deletion = Deletion::Unknown {
                reason: failure.reason(),
                message: "the store could not be probed".to_owned(),
            };
            self.reachable = Err(failure.into());
        }
    }
}

/// Writes the probe object, reads the bucket's object lock and, in a versioned bucket,
/// tries to delete the probe object's version.
async fn probe_store(
    spec: &BackupStoreSpec,
    credentials: Option<store::Credentials>,
    probe_name: &str,
) -> Findings {
    let target = match (&spec.s3, &credentials) {
        (Some(s3), Some(c)) => Some(
            s3::Target::of(s3, &c.access_key_id, &c.secret_access_key)
                .with_session_token(c.session_token.clone()),
        ),
        _ => None,
    };
    let opened = match store::Store::open(spec, credentials) {
        Ok(opened) => opened,
        Err(error) => return Findings::unreachable("Unreachable", error.to_string()),
    };
    let (probe, version) = store::probe(&opened, probe_name).await;
    let mut findings = Findings::from_probe(probe);
    let Some(target) = target else {
        return findings;
    };
    if findings.reachable.is_err() {
        return findings;
    }
    findings.lock = s3::object_lock(&target).await;
    if let Err(failure) = &findings.lock
        && failure.makes_unreachable()
    {
        findings.fail(failure.clone());
        return findings;
    }
    if let Some(version) = version {
        // A versioned bucket: deleting or overwriting only adds a version or a delete
        // marker; destroying a backup means deleting its version.
        let key = opened.full_key(&store::probe_key(probe_name));
        findings.deletion = match s3::delete_version(&target, &key, &version).await {
            DeleteAnswer::Deleted => Deletion::Possible,
            DeleteAnswer::Refused { code } => Deletion::Refused { codes: vec![code] },
            DeleteAnswer::Failed(failure) if failure.makes_unreachable() => {
                findings.fail(failure);
                return findings;
            }
            DeleteAnswer::Failed(failure) => Deletion::Unknown {
                reason: failure.reason(),
                message: failure.to_string(),
            },
        };
    }
    findings
}

/// The four conditions (type, status, reason, message) and whether the store is reachable.
fn status_of(
    store_type: StoreType,
    findings: &Findings,
) -> (Vec<(&'static str, bool, String, String)>, bool) {
    let (reachable, reach_reason, reach_message) = match &findings.reachable {
        Ok(()) => (
            true,
            "Probed".to_owned(),
            "a probe object was written".to_owned(),
        ),
        Err(unreachable) => (
            false,
            unreachable.reason.clone(),
            unreachable.message.clone(),
        ),
    };
    let (delete_ok, delete_reason, delete_message) = match (&findings.reachable, &findings.deletion) {
        (Err(unreachable), _) => (
            false,
            "Unknown".to_owned(),
            format!("the store could not be probed: {}", unreachable.reason),
        ),
        (Ok(()), Deletion::Possible) => (
            false,
            "CredentialsCanDelete".to_owned(),
            "the operator's credentials could overwrite or delete a probe object: an attacker holding them could destroy backups".to_owned(),
        ),
        (Ok(()), Deletion::Refused { codes }) => (
            true,
            "CredentialsCannotDelete".to_owned(),
            format!(
                "the operator's credentials could neither overwrite nor delete a probe object (the store refused: {})",
                codes.join(", ")
            ),
        ),
        (Ok(()), Deletion::Unknown { reason, message }) => (
            false,
            reason.clone(),
            format!("whether the operator's credentials can delete is not known: {message}"),
        ),
    };
    let (immutable, immutable_reason, immutable_message) = match (store_type, &findings.lock) {
        (StoreType::Filesystem, _) => (
            false,
            "NoObjectLock".to_owned(),
            "a filesystem store cannot lock objects".to_owned(),
        ),
        (StoreType::S3, Ok(Some(lock))) => (
            true,
            "ObjectLock".to_owned(),
            format!(
                "object lock {:?} with a default retention of {} days",
                lock.mode,
                lock.default_retention_days
                    .map_or_else(|| "no".to_owned(), |d| d.to_string())
            ),
        ),
        (StoreType::S3, Err(problem)) => (false, problem.reason(), problem.to_string()),
        (StoreType::S3, Ok(None)) if !reachable => (
            false,
            "Unknown".to_owned(),
            "the store could not be probed".to_owned(),
        ),
        (StoreType::S3, Ok(None)) => (
            false,
            "NoObjectLock".to_owned(),
            "the bucket has no object lock with a default retention".to_owned(),
        ),
    };
    let ready_message = if reachable {
        format!("reachable; {delete_message}")
    } else {
        reach_message.clone()
    };
    (
        vec![
            ("Ready", reachable, reach_reason.clone(), ready_message),
            ("Reachable", reachable, reach_reason, reach_message),
            ("Immutable", immutable, immutable_reason, immutable_message),
            ("DeleteProtected", delete_ok, delete_reason, delete_message),
        ],
        reachable,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::backup_store::ObjectLockMode;

    fn condition<'a>(
        wanted: &'a [(&'static str, bool, String, String)],
        type_: &str,
    ) -> (bool, &'a str) {
        let (_, ok, reason, _) = wanted.iter().find(|(t, ..)| *t == type_).unwrap();
        (*ok, reason.as_str())
    }

    fn reachable(deletion: Deletion, lock: Result<Option<ObjectLock>, S3Failure>) -> Findings {
        Findings {
            reachable: Ok(()),
            deletion,
            lock,
        }
    }

    #[test]
    fn a_signature_error_is_unreachable_and_never_delete_protected() {
        let mut findings = reachable(
            Deletion::Unknown {
                reason: "NotTried".into(),
                message: String::new(),
            },
            Ok(None),
        );
        findings.fail(S3Failure::Answered {
            what: "deleting a version of probes/p-1".into(),
            status: 403,
            code: "SignatureDoesNotMatch".into(),
            message: "The request signature we calculated does not match".into(),
        });
        let (wanted, up) = status_of(StoreType::S3, &findings);
        assert!(!up);
        assert_eq!(
            condition(&wanted, "Reachable"),
            (false, "SignatureDoesNotMatch")
        );
        assert_eq!(condition(&wanted, "DeleteProtected"), (false, "Unknown"));
        assert_eq!(findings.can_delete(), None);
    }

    #[test]
    fn only_a_refused_delete_is_delete_protected() {
        let lock = Ok(Some(ObjectLock {
            mode: ObjectLockMode::Compliance,
            default_retention_days: Some(1),
        }));
        let refused = reachable(
            Deletion::Refused {
                codes: vec!["InvalidRequest".into()],
            },
            lock.clone(),
        );
        let (wanted, _) = status_of(StoreType::S3, &refused);
        assert_eq!(
            condition(&wanted, "DeleteProtected"),
            (true, "CredentialsCannotDelete")
        );
        assert_eq!(condition(&wanted, "Immutable"), (true, "ObjectLock"));
        assert_eq!(refused.can_delete(), Some(false));

        let unknown = reachable(
            Deletion::Unknown {
                reason: "NoSuchVersion".into(),
                message: "deleting a version answered 404 NoSuchVersion".into(),
            },
            lock,
        );
        let (wanted, _) = status_of(StoreType::S3, &unknown);
        assert_eq!(
            condition(&wanted, "DeleteProtected"),
            (false, "NoSuchVersion")
        );
        assert_eq!(unknown.can_delete(), None);

        let deleted = reachable(Deletion::Possible, Ok(None));
        let (wanted, _) = status_of(StoreType::S3, &deleted);
        assert_eq!(
            condition(&wanted, "DeleteProtected"),
            (false, "CredentialsCanDelete")
        );
        assert_eq!(deleted.can_delete(), Some(true));
    }

    #[test]
    fn a_lock_that_cannot_be_read_is_not_immutable_and_says_why() {
        let findings = reachable(
            Deletion::Possible,
            Err(S3Failure::Answered {
                what: "reading the object lock of bucket b".into(),
                status: 403,
                code: "AccessDenied".into(),
                message: "Access Denied.".into(),
            }),
        );
        let (wanted, up) = status_of(StoreType::S3, &findings);
        assert!(up);
        assert_eq!(condition(&wanted, "Immutable"), (false, "AccessDenied"));
    }

    #[test]
    fn a_timeout_is_unreachable_with_the_reason_timeout() {
        let mut findings = reachable(Deletion::Possible, Ok(None));
        findings.fail(S3Failure::TimedOut {
            what: "write probes/p-1".into(),
            timeout_seconds: 30,
        });
        let (wanted, _) = status_of(StoreType::S3, &findings);
        assert_eq!(condition(&wanted, "Reachable"), (false, "Timeout"));
        assert_eq!(condition(&wanted, "Ready"), (false, "Timeout"));
        assert!(!condition(&wanted, "DeleteProtected").0);
    }
}
