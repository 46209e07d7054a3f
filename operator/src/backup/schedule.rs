//! The BackupSchedule controller: creates a Backup when a run is due (a requeue at the next
//! run time, never a poll), and applies retention when its backups change.

use crate::operator::Shared;
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder},
        reflector::ObjectRef,
        watcher,
    },
};
use serde_json::json;
use tracing::{info, warn};

use super::{
    Error, PRUNING_FROZEN_ANNOTATION, SCHEDULE_LABEL, archive, conditions, cron, engine,
    kube_error, retention, run_backup,
};
use crate::{
    api::{
        backup::{Backup, BackupPhase, BackupSpec, VerificationState},
        backup_schedule::{BackupSchedule, BackupScheduleStatus},
        incident::{Incident, IncidentState},
    },
    labels::{self, FIELD_MANAGER},
};

pub struct Context {
    client: Client,
    recorder: Recorder,
    /// The status this process last wrote per schedule uid (the watch cache may lag).
    written: Mutex<BTreeMap<String, BackupScheduleStatus>>,
}

/// Runs the controller until the operator stops.
pub async fn run(shared: Shared) {
    let client = shared.client.clone();
    shared.kind_listed(Api::<BackupSchedule>::all(client.clone()));
    let metrics = shared.metrics.clone();
    let context = Arc::new(Context {
        recorder: super::recorder(&client),
        client: client.clone(),
        written: Mutex::default(),
    });
    let controller = Controller::new(
        Api::<BackupSchedule>::all(client.clone()),
        shared.watch_config(),
    );
    let schedules = controller.store();
    controller
        .watches(
            Api::<Backup>::all(client.clone()),
            watcher::Config::default().labels(SCHEDULE_LABEL),
            |backup: Backup| {
                backup
                    .labels()
                    .get(SCHEDULE_LABEL)
                    .map(|name| ObjectRef::new(name))
            },
        )
        // An incident opening or closing freezes or thaws pruning on every schedule, and
        // `status.pruningFrozen` must say so at once: the incident waits for it.
        .watches(
            Api::<Incident>::all(client),
            watcher::Config::default(),
            move |_: Incident| {
                schedules
                    .state()
                    .iter()
                    .map(|s| ObjectRef::from_obj(&**s))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shared.shutdown())
        .run(reconcile, error_policy, context)
        .for_each(|result| {
            match result {
                Ok(_) => metrics.reconciled("BackupSchedule"),
                Err(error) => {
                    metrics.reconcile_failed("BackupSchedule");
                    warn!(%error, "schedule reconcile failed");
                }
            }
            futures::future::ready(())
        })
        .await;
}

fn error_policy(schedule: Arc<BackupSchedule>, error: &Error, _: Arc<Context>) -> Action {
    warn!(schedule = %schedule.name_any(), %error, "will retry");
    Action::requeue(Duration::from_secs(10))
}

/// Name of the Backup for the run due at `due`: the same for every retry of that run.
pub fn backup_name(schedule: &str, due: Timestamp) -> String {
    let stamp = due.strftime("%Y%m%d%H%M").to_string();
    let prefix: String = schedule.chars().take(253 - 13).collect();
    format!("{prefix}-{stamp}")
}

async fn reconcile(schedule: Arc<BackupSchedule>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = schedule.name_any();
    let uid = schedule.uid().unwrap_or_default();
    let previous = ctx
        .written
        .lock()
        .expect("not poisoned")
        .get(&uid)
        .cloned()
        .unwrap_or_else(|| schedule.status.clone().unwrap_or_default());
    let now = Timestamp::now();
    let spec = &schedule.spec;
    let generation = schedule.metadata.generation;
    let mut status = previous.clone();
    status.observed_generation = generation;

    let next_after = |after: Timestamp| cron::next_run(&spec.schedule.0, &spec.time_zone, after);
    let mut requeue = None;
    match next_after(now) {
        Err(problem) => {
            status.next_run = None;
            status.conditions = conditions(
                &previous.conditions,
                generation,
                now,
                &[
                    ("Ready", false, "InvalidSchedule", problem.clone()),
                    ("Stalled", true, "InvalidSchedule", problem),
                ],
            );
        }
        Ok(next_from_now) => {
            // A spec change re-reads the schedule from now.
            let due = match &previous.next_run {
                Some(due) if previous.observed_generation == generation => due.0,
                _ => next_from_now,
            };
            let mut next = due;
            if due <= now {
                if !spec.suspend {
                    let backup = create_backup(&ctx, &schedule, due).await?;
                    status.last_backup = Some(backup);
                }
                next = next_from_now;
            }
            status.next_run = Some(Time(next));
            let wait = next.duration_since(now).as_secs_f64().max(0.0);
            requeue = Some(Duration::from_secs_f64(wait) + Duration::from_millis(50));
            status.conditions = conditions(
                &previous.conditions,
                generation,
                now,
                &[
                    (
                        "Ready",
                        true,
                        if spec.suspend {
                            "Suspended"
                        } else {
                            "Scheduled"
                        },
                        format!("next run at {next}"),
                    ),
                    ("Stalled", false, "Scheduled", String::new()),
                ],
            );
        }
    }

    // Restore tests: due at the verification cron, on the newest completed backup.
    if let Some(verification) = &spec.verification {
        match cron::next_run(&verification.schedule.0, &spec.time_zone, now) {
            Err(problem) => {
                publish(
                    &ctx,
                    &schedule,
                    EventType::Warning,
                    "InvalidVerificationSchedule",
                    problem,
                )
                .await;
            }
            Ok(next_from_now) => {
                let due = match &previous.next_verification {
                    Some(due) if previous.observed_generation == generation => due.0,
                    _ => next_from_now,
                };
                let mut next = due;
                if due <= now {
                    if let Some(verified_at) = verify_newest(&ctx, &schedule).await? {
                        status.last_verified_time = Some(Time(verified_at));
                    }
                    next = next_from_now;
                }
                status.next_verification = Some(Time(next));
                let wait = Duration::from_secs_f64(next.duration_since(now).as_secs_f64().max(0.0))
                    + Duration::from_millis(50);
                requeue = Some(requeue.map_or(wait, |r: Duration| r.min(wait)));
            }
        }
    }

    // Retention over this schedule's backups.
    let backups = Api::<Backup>::all(ctx.client.clone())
        .list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={name}")))
        .await
        .map_err(kube_error(
            "list the Backups of",
            format!("BackupSchedule {name}"),
        ))?
        .items;
    let frozen = pruning_frozen(&ctx, &schedule).await?;
    status.pruning_frozen = frozen;
    let newest_completed = backups
        .iter()
        .filter_map(|b| b.status.as_ref())
        .filter(|s| s.phase == Some(BackupPhase::Completed))
        .filter_map(|s| s.completed.clone())
        .max_by_key(|t| t.0);
    if newest_completed.is_some() {
        status.last_successful_backup_time = newest_completed;
    }
    let newest_verified = backups
        .iter()
        .filter_map(|b| b.status.as_ref()?.verification.as_ref())
        .filter(|v| v.state == VerificationState::Verified)
        .filter_map(|v| v.time.clone())
        .max_by_key(|t| t.0);
    if newest_verified.is_some() {
        status.last_verified_time = newest_verified;
    }
    let candidates: Vec<_> = backups.iter().map(candidate).collect();
    for doomed in retention::to_delete(&candidates, &spec.retention, frozen, now) {
        let Some(backup) = backups.iter().find(|b| b.name_any() == doomed) else {
            continue;
        };
        prune(&ctx, &schedule, backup).await?;
    }

    if status != previous {
        let patch = json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "BackupSchedule", "status": status});
        Api::<BackupSchedule>::all(ctx.client.clone())
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(kube_error(
                "write status of",
                format!("BackupSchedule {name}"),
            ))?;
        ctx.written
            .lock()
            .expect("not poisoned")
            .insert(uid, status);
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Decrypts the newest completed backup of the schedule and checks it against its manifest,
/// then records the outcome on the Backup. Returns the time when it was verified.
async fn verify_newest(
    ctx: &Context,
    schedule: &BackupSchedule,
) -> Result<Option<Timestamp>, Error> {
    let Some(verification) = &schedule.spec.verification else {
        return Ok(None);
    };
    let name = schedule.name_any();
    let backups = Api::<Backup>::all(ctx.client.clone());
    let newest = backups
        .list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={name}")))
        .await
        .map_err(kube_error(
            "list the Backups of",
            format!("BackupSchedule {name}"),
        ))?
        .items
        .into_iter()
        .filter(|b| {
            b.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(BackupPhase::Completed))
        })
        .max_by_key(|b| {
            b.status
                .as_ref()
                .and_then(|s| s.completed.clone())
                .map(|t| t.0)
        });
    let Some(backup) = newest else {
        return Ok(None);
    };
    let backup_name = backup.name_any();
    let identity = engine::identity(&ctx.client, &verification.identity_secret_ref)
        .await
        .map_err(kube_error(
            "read the identity of",
            format!("BackupSchedule {name}"),
        ))?;
    let opened = match identity {
        Err(failure) => Err(failure),
        Ok(identity) => engine::read_backup(&ctx.client, &backup, &identity)
            .await
            .map_err(kube_error("verify", format!("Backup {backup_name}")))?,
    };
    let outcome = match opened {
        Err(failure) => Err(failure),
        Ok(objects) if verification.restore => match dry_run_restore(ctx, &name, &objects).await? {
            Ok(()) => Ok(format!(
                "decrypted; {} objects match the manifest and were accepted by the API server (server-side dry-run into a scratch namespace); checks are not run by this version",
                objects.len()
            )),
            Err(failure) => Err(failure),
        },
        Ok(objects) => Ok(format!(
            "decrypted; {} objects match the manifest",
            objects.len()
        )),
    };
    let now = Timestamp::now();
    let (state, message) = match &outcome {
        Ok(message) => (VerificationState::Verified, message.clone()),
        Err(failure) => (VerificationState::Failed, failure.clone()),
    };
    // A merge patch: the verification belongs to this step, the rest of the status to the
    // Backup controller.
    let patch = json!({"status": {"verification": {"state": state, "time": Time(now), "message": message}}});
    backups
        .patch_status(&backup_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(kube_error(
            "record the verification of",
            format!("Backup {backup_name}"),
        ))?;
    let (type_, reason) = if outcome.is_ok() {
        (EventType::Normal, "BackupVerified")
    } else {
        (EventType::Warning, "BackupVerificationFailed")
    };
    publish(
        ctx,
        schedule,
        type_,
        reason,
        format!("{backup_name}: {message}"),
    )
    .await;
    Ok(outcome.ok().map(|_| now))
}

/// Applies every object with server-side dry-run into a scratch namespace per source
/// namespace (created for the test and deleted after it): the API server validates and
/// admits each one, nothing is stored. The inner error names the first object refused.
async fn dry_run_restore(
    ctx: &Context,
    schedule: &str,
    objects: &[serde_json::Value],
) -> Result<Result<(), String>, Error> {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::{
        api::{DynamicObject, GroupVersionKind},
        discovery,
    };
    let namespaces = Api::<Namespace>::all(ctx.client.clone());
    let mut sources: Vec<&str> = objects
        .iter()
        .filter_map(|o| o["metadata"]["namespace"].as_str())
        .collect();
    sources.sort_unstable();
    sources.dedup();
    let mut kinds = BTreeMap::new();
    for (index, source) in sources.iter().enumerate() {
        // A new name every test: a deleted namespace lingers while it terminates.
        let scratch: String = format!(
            "resurgo-verify-{}-{index}-{}",
            Timestamp::now().as_second(),
            archive::sha256_hex(schedule.as_bytes())
        )
        .chars()
        .take(63)
        .collect();
        let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": scratch,
            "labels": {"app.kubernetes.io/managed-by": labels::MANAGED_BY, SCHEDULE_LABEL: schedule,
                       "pod-security.kubernetes.io/enforce": "restricted"}}});
        namespaces
            .patch(
                &scratch,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&namespace),
            )
            .await
            .map_err(kube_error("create the scratch namespace", scratch.clone()))?;
        let mut refused = None;
        for object in objects
            .iter()
            .filter(|o| o["metadata"]["namespace"] == *source)
        {
            let api_version = object["apiVersion"].as_str().unwrap_or_default();
            let kind = object["kind"].as_str().unwrap_or_default();
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let key = format!("{api_version}/{kind}");
            if !kinds.contains_key(&key) {
                let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
                match discovery::pinned_kind(
                    &ctx.client,
                    &GroupVersionKind::gvk(group, version, kind),
                )
                .await
                {
                    Ok((resource, _)) => {
                        kinds.insert(key.clone(), resource);
                    }
                    Err(error) => {
                        refused = Some(format!("{kind} is not served by this cluster: {error}"));
                        break;
                    }
                }
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), &scratch, &kinds[&key]);
            let mut copy = object.clone();
            copy["metadata"]["namespace"] = json!(scratch);
            let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
            match api.patch(name, &params, &Patch::Apply(&copy)).await {
                Ok(_) => {}
                Err(kube::Error::Api(status))
                    if status.code == 422 || status.code == 400 || status.code == 403 =>
                {
                    refused = Some(format!(
                        "{kind} {source}/{name} was refused by the API server: {}",
                        status.message
                    ));
                    break;
                }
                Err(error) => {
                    let _ = namespaces.delete(&scratch, &DeleteParams::default()).await;
                    return Err(kube_error(
                        "dry-run restore",
                        format!("{kind} {source}/{name}"),
                    )(error));
                }
            }
        }
        match namespaces.delete(&scratch, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(error) => return Err(kube_error("delete the scratch namespace", scratch)(error)),
        }
        if let Some(refused) = refused {
            return Ok(Err(refused));
        }
    }
    Ok(Ok(()))
}

fn candidate(backup: &Backup) -> retention::Candidate {
    let status = backup.status.clone().unwrap_or_default();
    retention::Candidate {
        name: backup.name_any(),
        completed: status
            .completed
            .filter(|_| status.phase == Some(BackupPhase::Completed))
            .map(|t| t.0),
        verified: status
            .verification
            .is_some_and(|v| v.state == VerificationState::Verified),
        immutable_until: status.immutable_until.map(|t| t.0),
    }
}

/// Pruning stops while the schedule carries the annotation or any Incident is open.
async fn pruning_frozen(ctx: &Context, schedule: &BackupSchedule) -> Result<bool, Error> {
    if schedule
        .annotations()
        .get(PRUNING_FROZEN_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        return Ok(true);
    }
    let incidents = Api::<Incident>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube_error("list", "Incidents"))?;
    Ok(incidents
        .items
        .iter()
        .any(|i| i.spec.state == IncidentState::Open))
}

async fn create_backup(
    ctx: &Context,
    schedule: &BackupSchedule,
    due: Timestamp,
) -> Result<String, Error> {
    let name = backup_name(&schedule.name_any(), due);
    let spec = &schedule.spec;
    let backup = Backup {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([
                (SCHEDULE_LABEL.to_owned(), schedule.name_any()),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    labels::MANAGED_BY.to_owned(),
                ),
            ])),
            ..Default::default()
        },
        spec: BackupSpec {
            schedule: Some(schedule.name_any()),
            store: spec.store.clone(),
            include: spec.include.clone(),
            exclude_kinds: spec.exclude_kinds.clone(),
            data_dumps: spec.data_dumps.clone(),
            encryption: spec.encryption.clone(),
            immutability: spec.immutability.clone(),
        },
        status: None,
    };
    match Api::<Backup>::all(ctx.client.clone())
        .create(&PostParams::default(), &backup)
        .await
    {
        Ok(_) => {
            info!(schedule = %schedule.name_any(), backup = %name, "backup due: created");
            publish(
                ctx,
                schedule,
                EventType::Normal,
                "BackupCreated",
                format!("run due at {due}: Backup {name}"),
            )
            .await;
        }
        Err(kube::Error::Api(status)) if status.is_already_exists() => {}
        Err(error) => return Err(kube_error("create", format!("Backup {name}"))(error)),
    }
    Ok(name)
}

/// Deletes a backup's files, then its Backup object. A store that refuses (object lock)
/// keeps both, and says so.
async fn prune(ctx: &Context, schedule: &BackupSchedule, backup: &Backup) -> Result<(), Error> {
    let name = backup.name_any();
    let location = backup
        .status
        .as_ref()
        .and_then(|s| s.location.clone())
        .unwrap_or_else(|| run_backup::location(&name));
    let store = engine::store_named(&ctx.client, &backup.spec.store)
        .await
        .map_err(kube_error("open the store of", format!("Backup {name}")))?;
    let store = match store {
        Ok(store) => store,
        Err(failure) => {
            publish(
                ctx,
                schedule,
                EventType::Warning,
                "PruneFailed",
                format!("{name}: {failure}"),
            )
            .await;
            return Ok(());
        }
    };
    for file in [archive::MANIFEST, archive::OBJECTS] {
        if let Err(error) = store.delete(&format!("{location}{file}")).await
            && !error.is_not_found()
        {
            publish(
                ctx,
                schedule,
                EventType::Warning,
                "PruneFailed",
                format!("{name}: {error}"),
            )
            .await;
            return Ok(());
        }
    }
    match Api::<Backup>::all(ctx.client.clone())
        .delete(&name, &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_not_found() => {}
        Err(error) => return Err(kube_error("delete", format!("Backup {name}"))(error)),
    }
    info!(schedule = %schedule.name_any(), backup = %name, "pruned by retention");
    publish(
        ctx,
        schedule,
        EventType::Normal,
        "BackupPruned",
        format!("{name} deleted by retention"),
    )
    .await;
    Ok(())
}

async fn publish(
    ctx: &Context,
    schedule: &BackupSchedule,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Schedule".into(),
        secondary: None,
    };
    if let Err(error) = ctx
        .recorder
        .publish(&event, &schedule.object_ref(&()))
        .await
    {
        warn!(schedule = %schedule.name_any(), %error, "could not publish event");
    }
}
