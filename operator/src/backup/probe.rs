//! The BackupStore controller: probes each store when the operator starts and whenever its
//! spec changes, and reports whether it is reachable, locked (WORM), and out of reach of the
//! operator's own credentials.
//!
//! The probe writes `probes/<store>-<generation>` and then tries to overwrite and delete it:
//! if either works, an attacker holding the operator's credentials could destroy backups.
//! In a versioned S3 bucket an overwrite or a delete only adds a version or a delete marker,
//! so there the probe tries to delete the probe object's version, which object lock refuses.
//! Object lock is read from the bucket's configuration; a filesystem never locks.

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

use super::{Error, conditions, engine, kube_error, s3, store};
use crate::{
    api::backup_store::{BackupStore, BackupStoreStatus, StoreType},
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
    let (found, object_lock, lock_problem) = match credentials {
        Err(failure) => (
            store::Probe {
                reachable: Err(failure),
                can_delete: None,
            },
            None,
            None,
        ),
        Ok(credentials) => {
            let target = match (&object.spec.s3, &credentials) {
                (Some(s3), Some(c)) => {
                    Some(s3::Target::of(s3, &c.access_key_id, &c.secret_access_key))
                }
                _ => None,
            };
            match store::Store::open(&object.spec, credentials) {
                Err(error) => (
                    store::Probe {
                        reachable: Err(error.to_string()),
                        can_delete: None,
                    },
                    None,
                    None,
                ),
                Ok(opened) => {
                    let (mut found, version) = store::probe(&opened, &probe_name).await;
                    let (mut lock, mut lock_problem) = (None, None);
                    if let (Some(target), Ok(())) = (&target, &found.reachable) {
                        match s3::object_lock(target).await {
                            Ok(found_lock) => lock = found_lock,
                            Err(problem) => lock_problem = Some(problem),
                        }
                        if let Some(version) = version {
                            // A versioned bucket: deleting or overwriting only adds a version or a
                            // delete marker; destroying a backup means deleting its version.
                            let key = opened.full_key(&store::probe_key(&probe_name));
                            match s3::delete_version(target, &key, &version).await {
                                Ok(deleted) => found.can_delete = Some(deleted),
                                Err(problem) => lock_problem = Some(problem),
                            }
                        }
                    }
                    (found, lock, lock_problem)
                }
            }
        }
    };
    let reachable = found.reachable.is_ok();
    let reach_message = match &found.reachable {
        Ok(()) => "a probe object was written".to_owned(),
        Err(error) => error.clone(),
    };
    let (delete_ok, delete_reason, delete_message) = match found.can_delete {
        Some(true) => (
            false,
            "CredentialsCanDelete",
            "the operator's credentials could overwrite or delete a probe object: an attacker holding them could destroy backups".to_owned(),
        ),
        Some(false) => (
            true,
            "CredentialsCannotDelete",
            "the operator's credentials could neither overwrite nor delete a probe object".to_owned(),
        ),
        None => (false, "Unknown", "the store could not be probed".to_owned()),
    };
    let immutable = object_lock.is_some();
    let immutable_message = match (store_type, &object_lock, &lock_problem) {
        (StoreType::Filesystem, _, _) => "a filesystem store cannot lock objects".to_owned(),
        (StoreType::S3, Some(lock), _) => format!(
            "object lock {:?} with a default retention of {} days",
            lock.mode,
            lock.default_retention_days
                .map_or_else(|| "no".to_owned(), |d| d.to_string())
        ),
        (StoreType::S3, None, Some(problem)) => problem.clone(),
        (StoreType::S3, None, None) => {
            "the bucket has no object lock with a default retention".to_owned()
        }
    };
    let ready_message = if reachable {
        format!("reachable; {delete_message}")
    } else {
        reach_message.clone()
    };
    let status = BackupStoreStatus {
        observed_generation: Some(generation),
        store_type: Some(store_type),
        conditions: conditions(
            &previous.conditions,
            Some(generation),
            now,
            &[
                (
                    "Ready",
                    reachable,
                    if reachable { "Probed" } else { "Unreachable" },
                    ready_message,
                ),
                (
                    "Reachable",
                    reachable,
                    if reachable { "Probed" } else { "Unreachable" },
                    reach_message,
                ),
                (
                    "Immutable",
                    immutable,
                    if immutable {
                        "ObjectLock"
                    } else {
                        "NoObjectLock"
                    },
                    immutable_message,
                ),
                ("DeleteProtected", delete_ok, delete_reason, delete_message),
            ],
        ),
        object_lock,
        credentials_can_delete: found.can_delete,
        last_probed: Some(Time(now)),
    };
    info!(store = %name, reachable, can_delete = ?found.can_delete, "store probed");
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
