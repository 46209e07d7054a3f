//! The BackupSchedule controller: creates a Backup when a run is due (a requeue at the next
//! run time, never a poll), and applies retention when its backups change.

use crate::operator::Shared;
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::Namespace,
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{
        DeleteParams, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, Patch, PatchParams,
        PostParams,
    },
    discovery,
    runtime::{
        controller::Action,
        events::{Event, EventType},
        reflector::ObjectRef,
        watcher,
    },
};
use serde_json::json;
use tracing::{info, warn};

use super::{
    Error, PRUNING_FROZEN_ANNOTATION, SCHEDULE_LABEL, archive, conditions, cron, engine,
    kube_error, retention, run_backup, selection, verify,
};
use crate::{
    api::{
        backup::{Backup, BackupPhase, BackupSpec, VerificationState},
        backup_schedule::{BackupSchedule, BackupScheduleStatus, Verification},
        backup_store::BackupStore,
        common::JobTemplate,
        incident::{Incident, IncidentState},
    },
    labels::{self, FIELD_MANAGER},
};

pub struct Context {
    client: Client,
    recorder: crate::events::Recorder,
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
    let controller = shared.controller(Api::<BackupSchedule>::all(client.clone()));
    let schedules = controller.store();
    let naming_store = schedules.clone();
    if let Err(error) = sweep_scratch(&client).await {
        warn!(%error, "could not sweep leftover scratch namespaces");
    }
    let schedule_of = |labels: &BTreeMap<String, String>| {
        labels
            .get(verify::SCRATCH_LABEL)
            .map(|name| ObjectRef::new(name))
    };
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
        // A store appearing (or changing) lets the schedules that name it plan their runs.
        .watches(
            Api::<BackupStore>::all(client.clone()),
            watcher::Config::default(),
            move |store: BackupStore| {
                let name = store.name_any();
                naming_store
                    .state()
                    .iter()
                    .filter(|s| s.spec.store == name)
                    .map(|s| ObjectRef::from_obj(&**s))
                    .collect::<Vec<_>>()
            },
        )
        // A check Job finishing moves its restore test on at once.
        .watches(
            Api::<Job>::all(client.clone()),
            watcher::Config::default().labels(verify::SCRATCH_LABEL),
            move |job: Job| schedule_of(job.labels()),
        )
        // A scratch namespace appearing (an operator that stopped mid-test) is carried on
        // or deleted by its schedule's reconcile.
        .watches(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default().labels(verify::SCRATCH_LABEL),
            move |namespace: Namespace| schedule_of(namespace.labels()),
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
        .trigger_backoff(crate::operator::TriggerBackoff::default())
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

    let next_after = |after: Timestamp| {
        cron::next_run("spec.schedule", &spec.schedule.0, &spec.time_zone, after)
    };
    // Every backup would fail without its store: nothing is planned until it exists, and
    // its watch brings the schedule back when it does.
    if Api::<BackupStore>::all(ctx.client.clone())
        .get_opt(&spec.store)
        .await
        .map_err(kube_error("read", format!("BackupStore {}", spec.store)))?
        .is_none()
    {
        status.next_run = None;
        // An Incident waits for every schedule to say pruning is frozen, this one too.
        status.pruning_frozen = pruning_frozen(&ctx, &schedule).await?;
        let why = format!(
            "spec.store: BackupStore {} not found: no backup is planned until it exists",
            spec.store
        );
        status.conditions = conditions(
            &previous.conditions,
            generation,
            now,
            &[
                ("Ready", false, "StoreNotFound", why),
                ("Stalled", false, "StoreNotFound", String::new()),
            ],
        );
        write_status(&ctx, &name, &uid, &previous, status).await?;
        return Ok(Action::await_change());
    }
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

    // Restore tests: due at the verification cron, on the newest completed backup. One in
    // progress goes on whatever the cron says; without `verification`, leftovers go.
    let mut test_due = false;
    if let Some(verification) = &spec.verification {
        match cron::next_run(
            "spec.verification.schedule",
            &verification.schedule.0,
            &spec.time_zone,
            now,
        ) {
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
                    test_due = true;
                    next = next_from_now;
                }
                status.next_verification = Some(Time(next));
                let wait = Duration::from_secs_f64(next.duration_since(now).as_secs_f64().max(0.0))
                    + Duration::from_millis(50);
                requeue = Some(requeue.map_or(wait, |r: Duration| r.min(wait)));
            }
        }
    }
    let tested = restore_test(&ctx, &schedule, test_due).await?;
    if let Some(verified_at) = tested.verified_at {
        status.last_verified_time = Some(Time(verified_at));
    }
    if let Some(wait) = tested.wait {
        requeue = Some(requeue.map_or(wait, |r: Duration| r.min(wait)));
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
    for (backup, expires) in retention::expires(&candidates, &spec.retention) {
        let Some(backup) = backups.iter().find(|b| b.name_any() == backup) else {
            continue;
        };
        let recorded = backup.status.as_ref().and_then(|s| s.expires.clone());
        if recorded.map(|t| t.0) != expires {
            record_expiry(&ctx, &backup.name_any(), expires).await?;
        }
    }
    for doomed in retention::to_delete(&candidates, &spec.retention, frozen, now) {
        let Some(backup) = backups.iter().find(|b| b.name_any() == doomed) else {
            continue;
        };
        prune(&ctx, &schedule, backup).await?;
    }

    write_status(&ctx, &name, &uid, &previous, status).await?;
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

/// Writes the schedule's status when it changed, and keeps it as this operator's truth.
async fn write_status(
    ctx: &Context,
    name: &str,
    uid: &str,
    previous: &BackupScheduleStatus,
    status: BackupScheduleStatus,
) -> Result<(), Error> {
    if status == *previous {
        return Ok(());
    }
    let patch =
        json!({"apiVersion": "resurgo.dev/v1alpha1", "kind": "BackupSchedule", "status": status});
    Api::<BackupSchedule>::all(ctx.client.clone())
        .patch_status(
            name,
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
        .insert(uid.to_owned(), status);
    Ok(())
}

/// What a restore-test step achieved.
#[derive(Default)]
struct Tested {
    /// When the newest backup was verified, if this step verified it.
    verified_at: Option<Timestamp>,
    /// Check Jobs are running: look again after this long at the latest (their first
    /// timeout); the Job watch brings the reconcile back sooner when one finishes.
    wait: Option<Duration>,
}

/// Moves the schedule's restore test on: starts one when `due`, carries on with one in
/// progress (found by its scratch namespaces' label, also after an operator restart), and
/// deletes scratch namespaces that no test needs any more.
async fn restore_test(
    ctx: &Context,
    schedule: &BackupSchedule,
    due: bool,
) -> Result<Tested, Error> {
    let name = schedule.name_any();
    let scratch: Vec<Namespace> = Api::<Namespace>::all(ctx.client.clone())
        .list(&ListParams::default().labels(&format!("{}={name}", verify::SCRATCH_LABEL)))
        .await
        .map_err(kube_error(
            "list the scratch namespaces of",
            format!("BackupSchedule {name}"),
        ))?
        .items
        .into_iter()
        .filter(|ns| ns.metadata.deletion_timestamp.is_none())
        .collect();
    let Some(verification) = &schedule.spec.verification else {
        delete_scratch(ctx, &scratch).await?;
        return Ok(Tested::default());
    };
    if scratch.is_empty() {
        if !due {
            return Ok(Tested::default());
        }
        return start_restore_test(ctx, schedule, verification).await;
    }
    let backup_name = scratch
        .iter()
        .find_map(|ns| ns.annotations().get(verify::BACKUP_ANNOTATION).cloned())
        .unwrap_or_default();
    let backup = Api::<Backup>::all(ctx.client.clone())
        .get_opt(&backup_name)
        .await
        .map_err(kube_error("read", format!("Backup {backup_name}")))?;
    let restored = scratch.iter().find_map(|ns| {
        let message = ns.annotations().get(verify::RESTORED_ANNOTATION)?;
        Some((ns.name_any(), message.clone()))
    });
    match (backup, restored) {
        (Some(_), Some((checks_namespace, restored))) => {
            let test = RestoreTest {
                backup: backup_name,
                restored,
                checks_namespace,
                scratch,
            };
            run_checks(ctx, schedule, verification, test).await
        }
        (backup, _) => {
            // Stopped before the copy was read back (an operator restart), or the Backup
            // was deleted meanwhile: nothing to conclude from this copy.
            info!(schedule = %name, backup = %backup_name, "discarding an unfinished restore test");
            delete_scratch(ctx, &scratch).await?;
            if backup.is_some() {
                return start_restore_test(ctx, schedule, verification).await;
            }
            Ok(Tested::default())
        }
    }
}

/// A restore test whose copy was read back equal to the backup.
struct RestoreTest {
    backup: String,
    /// What was compared, in words.
    restored: String,
    /// The scratch namespace the check Jobs run in: the copy of the first namespace of
    /// the backup's selection.
    checks_namespace: String,
    scratch: Vec<Namespace>,
}

/// Opens the newest completed backup of the schedule with every check, restores it into
/// fresh scratch namespaces and reads it back, then starts the checks. Without
/// `restore`, opening it is the whole test.
async fn start_restore_test(
    ctx: &Context,
    schedule: &BackupSchedule,
    verification: &Verification,
) -> Result<Tested, Error> {
    let name = schedule.name_any();
    let newest = Api::<Backup>::all(ctx.client.clone())
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
        return Ok(Tested::default());
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
        Ok(identity) => engine::open_backup(&ctx.client, &backup, &identity)
            .await
            .map_err(kube_error("verify", format!("Backup {backup_name}")))?,
    };
    let (objects, dumps) = match opened {
        Err(failure) => return finish(ctx, schedule, &backup_name, Err(failure), &[]).await,
        Ok(opened) => (opened.objects, opened.manifest.dumps.len()),
    };
    let mut opened = format!("decrypted; {} objects match the manifest", objects.len());
    if dumps > 0 {
        opened.push_str(&format!(
            "; {dumps} data dumps match their SHA-256 in the manifest"
        ));
    }
    if !verification.restore {
        return finish(ctx, schedule, &backup_name, Ok(opened), &[]).await;
    }

    let started = Timestamp::now();
    let uid = schedule.uid().unwrap_or_default();
    let namespaces = Api::<Namespace>::all(ctx.client.clone());
    let mut scratch = Vec::new();
    let mut copies = BTreeMap::new();
    for (index, source) in backup.spec.include.namespaces.iter().enumerate() {
        let copy = verify::scratch_name(&name, started, index);
        let manifest = verify::scratch_namespace(&copy, &name, &uid, &backup_name, source);
        let created = namespaces
            .patch(
                &copy,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&manifest),
            )
            .await
            .map_err(kube_error("create the scratch namespace", copy.clone()))?;
        scratch.push(created);
        Api::<NetworkPolicy>::namespaced(ctx.client.clone(), &copy)
            .patch(
                verify::ISOLATION_POLICY,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&verify::isolation_policy(&copy, &name)),
            )
            .await
            .map_err(kube_error(
                "isolate the scratch namespace",
                format!("NetworkPolicy {copy}/{}", verify::ISOLATION_POLICY),
            ))?;
        copies.insert(source.clone(), copy);
    }
    publish(
        ctx,
        schedule,
        EventType::Normal,
        "RestoreTestStarted",
        format!(
            "{backup_name}: restoring {} objects into {}",
            objects.len(),
            copies.values().cloned().collect::<Vec<_>>().join(", ")
        ),
    )
    .await;
    let restored = match restore_and_compare(ctx, &objects, &copies).await {
        Ok(Ok(restored)) => format!("{opened}; {restored}"),
        Ok(Err(failure)) => {
            return finish(ctx, schedule, &backup_name, Err(failure), &scratch).await;
        }
        Err(error) => {
            // Left for the next reconcile, which finds the copy unfinished and starts over.
            return Err(error);
        }
    };
    let checks_namespace = verify::scratch_name(&name, started, 0);
    // A merge patch: the namespace's labels belong to the apply above.
    let annotation = json!({"metadata": {"annotations": {verify::RESTORED_ANNOTATION: restored}}});
    namespaces
        .patch(
            &checks_namespace,
            &PatchParams::default(),
            &Patch::Merge(&annotation),
        )
        .await
        .map_err(kube_error(
            "record the comparison on the scratch namespace",
            checks_namespace.clone(),
        ))?;
    let test = RestoreTest {
        backup: backup_name,
        restored,
        checks_namespace,
        scratch,
    };
    run_checks(ctx, schedule, verification, test).await
}

/// Applies every object into the scratch copy of its namespace for real, reads each back
/// and compares it with the backup. The inner error names the first object refused or
/// restored differently.
async fn restore_and_compare(
    ctx: &Context,
    objects: &[serde_json::Value],
    copies: &BTreeMap<String, String>,
) -> Result<Result<String, String>, Error> {
    let mut ordered: Vec<&serde_json::Value> = objects.iter().collect();
    ordered.sort_by_key(|o| selection::restore_rank(o["kind"].as_str().unwrap_or_default()));
    let mut kinds = BTreeMap::new();
    for object in ordered {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let source = object["metadata"]["namespace"].as_str().unwrap_or_default();
        let Some(scratch) = copies.get(source) else {
            return Ok(Err(format!(
                "{kind} {source}/{name} is outside the namespaces the backup selected"
            )));
        };
        let key = format!("{api_version}/{kind}");
        if !kinds.contains_key(&key) {
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            match discovery::pinned_kind(&ctx.client, &GroupVersionKind::gvk(group, version, kind))
                .await
            {
                Ok((resource, _)) => {
                    kinds.insert(key.clone(), resource);
                }
                Err(error) => {
                    return Ok(Err(format!(
                        "{kind} is not served by this cluster: {error}"
                    )));
                }
            }
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), scratch, &kinds[&key]);
        let copy = verify::scratch_copy(object, scratch);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch(name, &params, &Patch::Apply(&copy)).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if [400, 403, 404, 409, 422].contains(&status.code) => {
                return Ok(Err(format!(
                    "{kind} {source}/{name} was refused by the API server when restored into {scratch}: {}",
                    status.message
                )));
            }
            Err(error) => {
                return Err(kube_error(
                    "restore for a test",
                    format!("{kind} {scratch}/{name}"),
                )(error));
            }
        }
        let read_back = api
            .get(name)
            .await
            .map_err(kube_error("read back", format!("{kind} {scratch}/{name}")))?;
        let mut restored = serde_json::to_value(&read_back).unwrap_or_default();
        restored["apiVersion"] = json!(api_version);
        restored["kind"] = json!(kind);
        if let Some(path) = verify::difference(object, &restored) {
            return Ok(Err(format!(
                "{kind} {source}/{name} was restored into {scratch} differently from the backup, at {path}"
            )));
        }
    }
    Ok(Ok(format!(
        "restored into {} and read back equal to the backup apart from server-set fields and the namespace",
        copies.values().cloned().collect::<Vec<_>>().join(", ")
    )))
}

/// Creates the check Jobs that do not exist yet and judges them; the test ends when all
/// passed, one failed, or one ran out of time.
async fn run_checks(
    ctx: &Context,
    schedule: &BackupSchedule,
    verification: &Verification,
    test: RestoreTest,
) -> Result<Tested, Error> {
    let name = schedule.name_any();
    let namespace = &test.checks_namespace;
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), namespace);
    let mut checks = Vec::new();
    for template in &verification.checks {
        let job_name = verify::check_job_name(&template.name);
        let timeout = template
            .timeout
            .as_ref()
            .and_then(|t| t.to_std().ok())
            .unwrap_or(verify::DEFAULT_CHECK_TIMEOUT);
        let existing = jobs
            .get_opt(&job_name)
            .await
            .map_err(kube_error("read", format!("Job {namespace}/{job_name}")))?;
        let state = match existing {
            Some(job) => verify::job_state(&serde_json::to_value(job).unwrap_or_default()),
            None => match create_check(ctx, &name, namespace, template).await? {
                Ok(()) => verify::JobState::Running {
                    created: Timestamp::now(),
                },
                Err(refused) => verify::JobState::Failed(refused),
            },
        };
        checks.push(verify::Check {
            name: template.name.clone(),
            state,
            timeout,
        });
    }
    let now = Timestamp::now();
    let names = || {
        verification
            .checks
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let outcome = match verify::checks(&checks, now) {
        verify::Checks::Running { until } => {
            let wait = until.duration_since(now).as_secs_f64().max(0.0);
            return Ok(Tested {
                verified_at: None,
                wait: Some(Duration::from_secs_f64(wait) + Duration::from_millis(50)),
            });
        }
        verify::Checks::Passed if checks.is_empty() => {
            Ok(format!("{}; no checks configured", test.restored))
        }
        verify::Checks::Passed => Ok(format!(
            "{}; checks passed in {namespace}: {}",
            test.restored,
            names()
        )),
        verify::Checks::Failed(why) => Err(format!("{}; but {why}", test.restored)),
    };
    finish(ctx, schedule, &test.backup, outcome, &test.scratch).await
}

/// Creates one check Job; the inner error is why the API server refused it.
async fn create_check(
    ctx: &Context,
    schedule: &str,
    namespace: &str,
    template: &JobTemplate,
) -> Result<Result<(), String>, Error> {
    let job_name = verify::check_job_name(&template.name);
    let spec: JobSpec = match serde_json::from_value(template.spec.clone()) {
        Ok(spec) => spec,
        Err(error) => return Ok(Err(format!("the spec is not a valid JobSpec: {error}"))),
    };
    let job = Job {
        metadata: ObjectMeta {
            name: Some(job_name.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (verify::SCRATCH_LABEL.to_owned(), schedule.to_owned()),
                (verify::CHECK_LABEL.to_owned(), template.name.clone()),
                (
                    labels::MANAGED_BY_KEY.to_owned(),
                    labels::MANAGED_BY.to_owned(),
                ),
            ])),
            ..Default::default()
        },
        spec: Some(spec),
        ..Default::default()
    };
    match Api::<Job>::namespaced(ctx.client.clone(), namespace)
        .create(&PostParams::default(), &job)
        .await
    {
        Ok(_) => Ok(Ok(())),
        Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(Ok(())),
        Err(kube::Error::Api(status)) if [400, 403, 422].contains(&status.code) => Ok(Err(
            format!("the Job was refused by the API server: {}", status.message),
        )),
        Err(error) => Err(kube_error("create", format!("Job {namespace}/{job_name}"))(
            error,
        )),
    }
}

/// Records the verdict on the Backup, says so in an Event, and deletes the scratch
/// namespaces whatever the verdict.
async fn finish(
    ctx: &Context,
    schedule: &BackupSchedule,
    backup_name: &str,
    outcome: Result<String, String>,
    scratch: &[Namespace],
) -> Result<Tested, Error> {
    let now = Timestamp::now();
    let (state, message) = match &outcome {
        Ok(message) => (VerificationState::Verified, message.clone()),
        Err(failure) => (VerificationState::Failed, failure.clone()),
    };
    // A merge patch: the verification belongs to this step, the rest of the status to the
    // Backup controller.
    let patch = json!({"status": {"verification": {"state": state, "time": Time(now), "message": message}}});
    match Api::<Backup>::all(ctx.client.clone())
        .patch_status(backup_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_not_found() => {}
        Err(error) => {
            return Err(kube_error(
                "record the verification of",
                format!("Backup {backup_name}"),
            )(error));
        }
    }
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
    delete_scratch(ctx, scratch).await?;
    Ok(Tested {
        verified_at: outcome.ok().map(|_| now),
        wait: None,
    })
}

async fn delete_scratch(ctx: &Context, scratch: &[Namespace]) -> Result<(), Error> {
    let namespaces = Api::<Namespace>::all(ctx.client.clone());
    for namespace in scratch {
        let name = namespace.name_any();
        match namespaces.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(error) => return Err(kube_error("delete the scratch namespace", name)(error)),
        }
    }
    Ok(())
}

/// Deletes the scratch namespaces of schedules that no longer exist: left by an operator
/// that stopped mid-test before their schedule was deleted (the garbage collector removes
/// the others with their owner). Those of existing schedules are their reconcile's to
/// carry on or delete.
async fn sweep_scratch(client: &Client) -> Result<(), Error> {
    let namespaces = Api::<Namespace>::all(client.clone());
    let scratch = namespaces
        .list(&ListParams::default().labels(verify::SCRATCH_LABEL))
        .await
        .map_err(kube_error(
            "list",
            "the scratch namespaces of restore tests",
        ))?;
    let schedules = Api::<BackupSchedule>::all(client.clone());
    for namespace in scratch.items {
        let Some(schedule) = namespace.labels().get(verify::SCRATCH_LABEL) else {
            continue;
        };
        let present = schedules
            .get_opt(schedule)
            .await
            .map_err(kube_error("read", format!("BackupSchedule {schedule}")))?
            .is_some();
        if !present && namespace.metadata.deletion_timestamp.is_none() {
            info!(namespace = %namespace.name_any(), %schedule, "deleting a leftover scratch namespace");
            match namespaces
                .delete(&namespace.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(error) => {
                    return Err(kube_error(
                        "delete the scratch namespace",
                        namespace.name_any(),
                    )(error));
                }
            }
        }
    }
    Ok(())
}

/// Writes `status.expires` of a Backup, or removes it.
async fn record_expiry(
    ctx: &Context,
    backup: &str,
    expires: Option<Timestamp>,
) -> Result<(), Error> {
    // A merge patch: the field is retention's, the rest of the status the Backup
    // controller's.
    let patch = json!({"status": {"expires": expires.map(Time)}});
    match Api::<Backup>::all(ctx.client.clone())
        .patch_status(backup, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(error) => Err(kube_error(
            "record when retention may delete",
            format!("Backup {backup}"),
        )(error)),
    }
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

/// Deletes a backup's files (the manifest first, so that what is left is never taken for a
/// whole backup; then the objects and the data dumps), then its Backup object. A store
/// that refuses (object lock) keeps both, and says so.
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
    let files = [archive::MANIFEST, archive::OBJECTS]
        .into_iter()
        .map(|file| format!("{location}{file}"))
        .chain(
            backup
                .spec
                .data_dumps
                .iter()
                .map(|data_dump| super::dump::key(&location, data_dump)),
        );
    for file in files {
        if let Err(error) = store.delete(&file).await
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
