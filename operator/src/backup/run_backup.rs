//! The Backup controller: a Backup runs once. It reads the selected objects, seals them
//! (manifest, age encryption) and writes them to its store without ever overwriting, then
//! records what it wrote. A backup that cannot be made safely fails with the reason.

use crate::operator::Shared;
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration as StdDuration,
};

use futures::StreamExt;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType},
    },
};
use serde_json::json;
use tracing::{info, warn};

use super::{Error, archive, conditions, engine, kube_error};
use crate::{
    api::{
        backup::{Backup, BackupPhase, BackupStatus},
        backup_store::{BackupStore, StoreType},
    },
    labels::FIELD_MANAGER,
};

pub struct Context {
    client: Client,
    recorder: crate::events::Recorder,
    /// Backups this process finished, by uid: the watch cache may still show them Running.
    finished: Mutex<BTreeMap<String, BackupPhase>>,
}

/// Runs the controller until the operator stops.
pub async fn run(shared: Shared) {
    let client = shared.client.clone();
    shared.kind_listed(Api::<Backup>::all(client.clone()));
    let metrics = shared.metrics.clone();
    let context = Arc::new(Context {
        recorder: super::recorder(&client),
        client: client.clone(),
        finished: Mutex::default(),
    });
    shared
        .controller(Api::<Backup>::all(client))
        .trigger_backoff(crate::operator::TriggerBackoff::default())
        .graceful_shutdown_on(shared.shutdown())
        .run(reconcile, error_policy, context)
        .for_each(|result| {
            match result {
                Ok(_) => metrics.reconciled("Backup"),
                Err(error) => {
                    metrics.reconcile_failed("Backup");
                    warn!(%error, "backup reconcile failed");
                }
            }
            futures::future::ready(())
        })
        .await;
}

fn error_policy(backup: Arc<Backup>, error: &Error, _: Arc<Context>) -> Action {
    warn!(backup = %backup.name_any(), %error, "will retry");
    Action::requeue(StdDuration::from_secs(5))
}

/// Where a backup's files live in its store.
pub fn location(name: &str) -> String {
    format!("backups/{name}/")
}

async fn reconcile(backup: Arc<Backup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = backup.name_any();
    let uid = backup.uid().unwrap_or_default();
    let previous = backup.status.clone().unwrap_or_default();
    if backup
        .annotations()
        .contains_key(super::IMPORTED_ANNOTATION)
    {
        // A record brought from another cluster: its content is in the store already.
        return Ok(Action::await_change());
    }
    if matches!(
        previous.phase,
        Some(BackupPhase::Completed | BackupPhase::Failed)
    ) || ctx
        .finished
        .lock()
        .expect("not poisoned")
        .contains_key(&uid)
    {
        return Ok(Action::await_change());
    }
    let started = previous.started.clone().unwrap_or(Time(Timestamp::now()));
    if previous.phase != Some(BackupPhase::Running) {
        let running = BackupStatus {
            phase: Some(BackupPhase::Running),
            started: Some(started.clone()),
            conditions: conditions(
                &previous.conditions,
                backup.metadata.generation,
                Timestamp::now(),
                &[("Completed", false, "Running", "reading the objects".into())],
            ),
            ..Default::default()
        };
        write_status(&ctx, &name, &running).await?;
        publish(
            &ctx,
            &backup,
            EventType::Normal,
            "BackupStarted",
            format!("backing up {}", backup.spec.include.namespaces.join(", ")),
        )
        .await;
    }

    let outcome = make(&ctx, &backup).await?;
    let now = Timestamp::now();
    let status = match outcome {
        Ok(written) => {
            let mut message = format!(
                "{} objects, {} bytes at {}",
                written.items, written.bytes, written.location
            );
            if !written.forbidden_kinds.is_empty() {
                message.push_str(&format!(
                    "; left out because the operator may not list them: {}",
                    written.forbidden_kinds.join(", ")
                ));
            }
            info!(backup = %name, items = written.items, bytes = written.bytes, "backup completed");
            publish(
                &ctx,
                &backup,
                EventType::Normal,
                "BackupCompleted",
                message.clone(),
            )
            .await;
            BackupStatus {
                phase: Some(BackupPhase::Completed),
                conditions: conditions(
                    &previous.conditions,
                    backup.metadata.generation,
                    now,
                    &[("Completed", true, "Completed", message)],
                ),
                items: Some(written.items),
                bytes: Some(written.bytes),
                manifest_sha256: Some(written.manifest_sha256),
                location: Some(written.location),
                started: Some(started),
                completed: Some(Time(now)),
                immutable_until: written.immutable_until.map(Time),
                ..Default::default()
            }
        }
        Err(failure) => {
            warn!(backup = %name, reason = %failure, "backup failed");
            publish(
                &ctx,
                &backup,
                EventType::Warning,
                "BackupFailed",
                failure.clone(),
            )
            .await;
            BackupStatus {
                phase: Some(BackupPhase::Failed),
                conditions: conditions(
                    &previous.conditions,
                    backup.metadata.generation,
                    now,
                    &[("Completed", false, "Failed", failure.clone())],
                ),
                started: Some(started),
                message: Some(failure),
                ..Default::default()
            }
        }
    };
    let phase = status.phase.expect("set above");
    write_status(&ctx, &name, &status).await?;
    ctx.finished
        .lock()
        .expect("not poisoned")
        .insert(uid, phase);
    Ok(Action::await_change())
}

struct Written {
    items: u64,
    bytes: u64,
    manifest_sha256: String,
    location: String,
    immutable_until: Option<Timestamp>,
    forbidden_kinds: Vec<String>,
}

/// Makes the backup; the inner error is why it failed for good.
async fn make(ctx: &Context, backup: &Backup) -> Result<Result<Written, String>, Error> {
    let name = backup.name_any();
    let spec = &backup.spec;
    let Some(store) = Api::<BackupStore>::all(ctx.client.clone())
        .get_opt(&spec.store)
        .await
        .map_err(kube_error("read", format!("BackupStore {}", spec.store)))?
    else {
        return Ok(Err(format!("BackupStore {} not found", spec.store)));
    };
    let store_status = store.status.clone().unwrap_or_default();
    let object_lock = match (&store.spec.filesystem, &store_status.object_lock) {
        (Some(_), _) => None,
        (None, lock) => lock.clone(),
    };
    if let Some(immutability) = &spec.immutability
        && immutability.required
    {
        if object_lock.is_none() {
            let why = if store.spec.filesystem.is_some() {
                "a filesystem store cannot lock objects".to_owned()
            } else {
                "its last probe found no object lock on the bucket".to_owned()
            };
            return Ok(Err(format!(
                "immutability is required, but BackupStore {} has no object lock ({why}): refusing to write a backup that an attacker could delete",
                spec.store
            )));
        }
        if store_status.credentials_can_delete != Some(false) {
            return Ok(Err(format!(
                "immutability is required, but the operator's credentials for BackupStore {} can delete or overwrite backups (or the store was not probed yet)",
                spec.store
            )));
        }
    }
    if !spec.data_dumps.is_empty() {
        return Ok(Err(
            "dataDumps are not run by this version of the operator: remove them, or back up data with a Job of your own".into(),
        ));
    }
    let opened = engine::open_store(&ctx.client, &store.spec)
        .await
        .map_err(kube_error(
            "read credentials of",
            format!("BackupStore {}", spec.store),
        ))?;
    let opened = match opened {
        Ok(opened) => opened,
        Err(failure) => return Ok(Err(failure)),
    };
    let collected = match engine::collect(&ctx.client, &spec.include, &spec.exclude_kinds)
        .await
        .map_err(kube_error("read the objects of", format!("Backup {name}")))?
    {
        Ok(collected) => collected,
        Err(failure) => return Ok(Err(failure)),
    };
    let recipients: Vec<String> = spec
        .encryption
        .recipients
        .iter()
        .map(|r| r.0.clone())
        .collect();
    let namespaces = spec.include.namespaces.clone();
    let items = collected.objects.len() as u64;
    let backup_name = name.clone();
    let sealed = tokio::task::spawn_blocking(move || {
        archive::seal(&backup_name, &namespaces, collected.objects, &recipients)
    })
    .await
    .map_err(|error| error.to_string());
    let sealed = match sealed {
        Ok(Ok(sealed)) => sealed,
        Ok(Err(error)) => return Ok(Err(error.to_string())),
        Err(error) => return Ok(Err(error)),
    };
    let location = location(&name);
    let bytes = (sealed.ciphertext.len() + sealed.manifest_bytes.len()) as u64;
    // Objects first, manifest last: a manifest means a whole backup.
    for (file, content) in [
        (archive::OBJECTS, sealed.ciphertext),
        (archive::MANIFEST, sealed.manifest_bytes),
    ] {
        if let Err(error) = opened.create(&format!("{location}{file}"), content).await {
            return Ok(Err(if error.is_already_there() {
                format!(
                    "{location}{file} already exists in the store (an earlier attempt, or another backup of the same name): it is never overwritten; create a new Backup"
                )
            } else {
                error.to_string()
            }));
        }
    }
    let immutable_until = match (opened.kind, &object_lock) {
        (StoreType::S3, Some(lock)) => lock.default_retention_days.and_then(|days| {
            Timestamp::now()
                .checked_add(k8s_openapi::jiff::SignedDuration::from_hours(
                    i64::from(days) * 24,
                ))
                .ok()
        }),
        _ => None,
    };
    Ok(Ok(Written {
        items,
        bytes,
        manifest_sha256: sealed.manifest_sha256,
        location,
        immutable_until,
        forbidden_kinds: collected.forbidden_kinds,
    }))
}

async fn write_status(ctx: &Context, name: &str, status: &BackupStatus) -> Result<(), Error> {
    let patch = json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "Backup", "status": status});
    Api::<Backup>::all(ctx.client.clone())
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(kube_error("write status of", format!("Backup {name}")))?;
    Ok(())
}

async fn publish(ctx: &Context, backup: &Backup, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Backup".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &backup.object_ref(&())).await {
        warn!(backup = %backup.name_any(), %error, "could not publish event");
    }
}
