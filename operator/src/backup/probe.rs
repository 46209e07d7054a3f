//! The BackupStore controller: probes each store when the operator starts and whenever its
//! spec changes, and reports whether it is reachable, locked (WORM), and out of reach of the
//! operator's own credentials.
//!
//! The probe writes `probes/<store>-<generation>` and then tries to overwrite and delete it:
//! if either works, an attacker holding the operator's credentials could destroy backups.
//! Object lock is only known for stores that report it: a filesystem never locks, and the
//! S3 client used here cannot read a bucket's lock configuration, so an S3 store reports
//! `Immutable` as Unknown unless its probe object could not be deleted.

use std::{collections::BTreeSet, future::Future, sync::Arc, sync::Mutex, time::Duration};

use futures::StreamExt;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{Controller, controller::Action, watcher},
};
use serde_json::json;
use tracing::{info, warn};

use super::{Error, conditions, engine, kube_error, store};
use crate::{
    api::backup_store::{BackupStore, BackupStoreStatus, StoreType},
    labels::FIELD_MANAGER,
};

pub struct Context {
    client: Client,
    /// (uid, generation) probed by this process.
    probed: Mutex<BTreeSet<(String, i64)>>,
}

pub async fn run(client: Client, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let context = Arc::new(Context {
        client: client.clone(),
        probed: Mutex::default(),
    });
    Controller::new(Api::<BackupStore>::all(client), watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "store reconcile failed");
            }
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
    let opened = engine::open_store(&ctx.client, &object.spec)
        .await
        .map_err(kube_error(
            "read credentials of",
            format!("BackupStore {name}"),
        ))?;
    let found = match opened {
        Ok(opened) => store::probe(&opened, &format!("{name}-{generation}")).await,
        Err(failure) => store::Probe {
            reachable: Err(failure),
            can_delete: None,
        },
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
    let immutable_message = match store_type {
        StoreType::Filesystem => "a filesystem store cannot lock objects".to_owned(),
        StoreType::S3 if found.can_delete == Some(false) => {
            "objects could not be deleted or overwritten".to_owned()
        }
        StoreType::S3 => "object lock is not reported by this store".to_owned(),
    };
    let immutable = store_type == StoreType::S3 && found.can_delete == Some(false);
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
        object_lock: previous.object_lock.filter(|_| immutable),
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
