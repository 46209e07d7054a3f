//! The Backup controller: a Backup runs once. It runs its data-dump Jobs (each uploads one
//! age-encrypted file with a pre-signed URL, see [`super::dump`]) and waits for them on a
//! watch of those Jobs, then reads the selected objects, seals them (manifest, age
//! encryption) and writes them to its store without ever overwriting, then records what it
//! wrote. A backup that cannot be made safely fails with the reason.
//!
//! A backup in progress lives in its status and in the cluster: the dumps recorded as
//! completed are never run again, the Jobs are found again by name, and the upload Secrets
//! are deleted when a Job is done, when the backup ends, and again after a restart.

use crate::operator::Shared;
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration as StdDuration,
};

use futures::StreamExt;
use k8s_openapi::{
    ByteString,
    api::{batch::v1::Job, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy},
    runtime::{
        controller::Action,
        events::{Event, EventType},
        reflector::ObjectRef,
        watcher,
    },
};
use serde_json::json;
use tracing::{info, warn};

use super::{Error, archive, conditions, dump, engine, kube_error, store::Store, verify};
use crate::{
    api::{
        backup::{Backup, BackupPhase, BackupStatus, DumpPhase, DumpStatus},
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
        .controller(Api::<Backup>::all(client.clone()))
        // A dump Job finishing moves its backup on at once. A Backup is cluster-scoped and
        // its Jobs are not, so the owner reference is mapped by hand.
        .watches(
            Api::<Job>::all(client),
            watcher::Config::default().labels(dump::DUMP_LABEL),
            |job: Job| {
                job.owner_references()
                    .iter()
                    .find(|o| o.kind == "Backup" && o.api_version == "resurgo.dev/v1alpha1")
                    .map(|o| ObjectRef::<Backup>::new(&o.name))
            },
        )
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
    if ctx
        .finished
        .lock()
        .expect("not poisoned")
        .contains_key(&uid)
    {
        return Ok(Action::await_change());
    }
    if let Some(phase @ (BackupPhase::Completed | BackupPhase::Failed)) = previous.phase {
        // Finished, maybe by an operator that stopped before it deleted the upload URLs:
        // nothing that can write to the store stays in the cluster.
        delete_upload_secrets(&ctx, &backup).await?;
        ctx.finished
            .lock()
            .expect("not poisoned")
            .insert(uid, phase);
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

    let (outcome, dumps) = make(&ctx, &backup, &previous.dumps).await?;
    let now = Timestamp::now();
    let outcome = match outcome {
        Made::Waiting { until } => {
            let running: Vec<_> = dumps
                .iter()
                .filter(|d| d.phase == DumpPhase::Running)
                .map(|d| format!("{}/{}", d.namespace, d.job))
                .collect();
            let status = BackupStatus {
                phase: Some(BackupPhase::Running),
                started: Some(started),
                conditions: conditions(
                    &previous.conditions,
                    backup.metadata.generation,
                    now,
                    &[(
                        "Completed",
                        false,
                        "Running",
                        format!("waiting for the data-dump Jobs {}", running.join(", ")),
                    )],
                ),
                dumps,
                ..Default::default()
            };
            if Some(&status) != backup.status.as_ref() {
                write_status(&ctx, &name, &status).await?;
            }
            // The Job watch brings the reconcile back when one finishes; this is for the
            // first timeout.
            let wait = until.duration_since(now).as_secs_f64().max(0.0);
            return Ok(Action::requeue(
                StdDuration::from_secs_f64(wait) + StdDuration::from_millis(50),
            ));
        }
        Made::Written(written) => Ok(written),
        Made::Failed(failure) => Err(failure),
    };
    if !backup.spec.data_dumps.is_empty() {
        if outcome.is_err() {
            stop_dump_jobs(&ctx, &backup).await?;
        }
        delete_upload_secrets(&ctx, &backup).await?;
    }
    let status = match outcome {
        Ok(written) => {
            let mut message = format!(
                "{} objects, {} bytes at {}",
                written.items, written.bytes, written.location
            );
            if !written.dumps.is_empty() {
                message.push_str(&format!(
                    ", with the data dumps {}",
                    written.dumps.join(", ")
                ));
            }
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
                dumps,
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
                dumps,
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
    /// `namespace/name` of each data dump written.
    dumps: Vec<String>,
}

/// Where a backup got to in one reconcile.
enum Made {
    Written(Written),
    /// Why it failed for good.
    Failed(String),
    /// Data-dump Jobs are running; the first times out at `until`.
    Waiting {
        until: Timestamp,
    },
}

/// Makes the backup, or moves it on as far as it goes now; also the dumps' status.
async fn make(
    ctx: &Context,
    backup: &Backup,
    recorded: &[DumpStatus],
) -> Result<(Made, Vec<DumpStatus>), Error> {
    let name = backup.name_any();
    let spec = &backup.spec;
    let failed = |failure: String| Ok((Made::Failed(failure), recorded.to_vec()));
    let Some(store) = Api::<BackupStore>::all(ctx.client.clone())
        .get_opt(&spec.store)
        .await
        .map_err(kube_error("read", format!("BackupStore {}", spec.store)))?
    else {
        return failed(format!("BackupStore {} not found", spec.store));
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
            return failed(format!(
                "immutability is required, but BackupStore {} has no object lock ({why}): refusing to write a backup that an attacker could delete",
                spec.store
            ));
        }
        if store_status.credentials_can_delete != Some(false) {
            return failed(format!(
                "immutability is required, but the operator's credentials for BackupStore {} can delete or overwrite backups (or the store was not probed yet)",
                spec.store
            ));
        }
    }
    let recipients: Vec<String> = spec
        .encryption
        .recipients
        .iter()
        .map(|r| r.0.clone())
        .collect();
    let location = location(&name);
    if !spec.data_dumps.is_empty() {
        if store.spec.filesystem.is_some() {
            return failed(format!(
                "spec.dataDumps needs an S3 BackupStore, and {} is a filesystem store: a data-dump Job runs in a pod of its own and uploads with a pre-signed URL, which a directory of the operator's cannot give; use an S3 store, or remove spec.dataDumps",
                spec.store
            ));
        }
        // Every Job is checked before any is created, and so is the right to take its
        // upload URL away again.
        for (index, data_dump) in spec.data_dumps.iter().enumerate() {
            let key = dump::key(&location, data_dump);
            let which = format!(
                "spec.dataDumps[{index}] ({}/{})",
                data_dump.namespace, data_dump.job.name
            );
            if let Err(why) = dump::job(data_dump, &name, "", &key, &recipients) {
                return failed(format!("{which}: {why}"));
            }
            if recorded
                .iter()
                .any(|d| d.namespace == data_dump.namespace && d.name == data_dump.job.name)
            {
                continue;
            }
            for (group, resource) in [("", "secrets"), ("batch", "jobs")] {
                if !may_delete(&ctx.client, &data_dump.namespace, group, resource).await? {
                    return failed(format!(
                        "{which}: the operator may not delete {resource} in {}, so the Job's upload URL could stay in the cluster: grant it (the chart's backup.dataDumpNamespaces) and create a new Backup",
                        data_dump.namespace
                    ));
                }
            }
        }
    }
    let opened = engine::open_store(&ctx.client, &store.spec)
        .await
        .map_err(kube_error(
            "read credentials of",
            format!("BackupStore {}", spec.store),
        ))?;
    let opened = match opened {
        Ok(opened) => opened,
        Err(failure) => return failed(failure),
    };
    let (dumps, statuses) = if spec.data_dumps.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        let (outcome, statuses) =
            run_dumps(ctx, backup, &opened, &location, &recipients, recorded).await?;
        match outcome {
            Dumps::Done(entries) => (entries, statuses),
            Dumps::Failed(failure) => return Ok((Made::Failed(failure), statuses)),
            Dumps::Waiting { until } => return Ok((Made::Waiting { until }, statuses)),
        }
    };
    let failed = |failure: String| Ok((Made::Failed(failure), statuses.clone()));
    let collected = match engine::collect(&ctx.client, &spec.include, &spec.exclude_kinds)
        .await
        .map_err(kube_error("read the objects of", format!("Backup {name}")))?
    {
        Ok(collected) => collected,
        Err(failure) => return failed(failure),
    };
    let namespaces = spec.include.namespaces.clone();
    let items = (collected.objects.len() + dumps.len()) as u64;
    let dump_bytes: u64 = dumps.iter().map(|d| d.bytes).sum();
    let dump_names: Vec<String> = dumps
        .iter()
        .map(|d| format!("{}/{}", d.namespace, d.name))
        .collect();
    let backup_name = name.clone();
    let sealed = tokio::task::spawn_blocking(move || {
        archive::seal(
            &backup_name,
            &namespaces,
            collected.objects,
            dumps,
            &recipients,
        )
    })
    .await
    .map_err(|error| error.to_string());
    let sealed = match sealed {
        Ok(Ok(sealed)) => sealed,
        Ok(Err(error)) => return failed(error.to_string()),
        Err(error) => return failed(error),
    };
    let bytes = (sealed.ciphertext.len() + sealed.manifest_bytes.len()) as u64 + dump_bytes;
    // Objects first, manifest last: a manifest means a whole backup.
    for (file, content) in [
        (archive::OBJECTS, sealed.ciphertext),
        (archive::MANIFEST, sealed.manifest_bytes),
    ] {
        if let Err(error) = opened.create(&format!("{location}{file}"), content).await {
            return failed(if error.is_already_there() {
                format!(
                    "{location}{file} already exists in the store (an earlier attempt, or another backup of the same name): it is never overwritten; create a new Backup"
                )
            } else {
                error.to_string()
            });
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
    Ok((
        Made::Written(Written {
            items,
            bytes,
            manifest_sha256: sealed.manifest_sha256,
            location,
            immutable_until,
            forbidden_kinds: collected.forbidden_kinds,
            dumps: dump_names,
        }),
        statuses,
    ))
}

/// Where the data dumps of a backup got to.
enum Dumps {
    /// Every dump is uploaded and checked: their manifest entries.
    Done(Vec<archive::DumpEntry>),
    /// The first dump that failed, in words.
    Failed(String),
    /// Jobs are running; the first times out at `until`.
    Waiting { until: Timestamp },
}

/// Starts the dump Jobs not started yet, and checks the uploads of those that completed.
/// A dump recorded as completed is never run again.
async fn run_dumps(
    ctx: &Context,
    backup: &Backup,
    store: &Store,
    location: &str,
    recipients: &[String],
    recorded: &[DumpStatus],
) -> Result<(Dumps, Vec<DumpStatus>), Error> {
    let name = backup.name_any();
    let uid = backup.uid().unwrap_or_default();
    let now = Timestamp::now();
    let mut statuses = Vec::new();
    let mut entries = Vec::new();
    let mut until: Option<Timestamp> = None;
    let mut failure = None;
    for (index, data_dump) in backup.spec.data_dumps.iter().enumerate() {
        let recorded = recorded
            .iter()
            .find(|d| d.namespace == data_dump.namespace && d.name == data_dump.job.name);
        if failure.is_some() {
            // Not started after a failure; what was recorded stays.
            statuses.extend(recorded.cloned());
            continue;
        }
        let job_name = dump::job_name(&name, &data_dump.job.name);
        let key = dump::key(location, data_dump);
        let which = format!(
            "spec.dataDumps[{index}] ({}/{})",
            data_dump.namespace, data_dump.job.name
        );
        let mut fail = |why: String, statuses: &mut Vec<DumpStatus>| {
            statuses.push(dump::status(
                data_dump,
                &job_name,
                &key,
                DumpPhase::Failed,
                None,
                Some(why.clone()),
            ));
            failure = Some(why);
        };
        let jobs = Api::<Job>::namespaced(ctx.client.clone(), &data_dump.namespace);
        let existing = if recorded.is_some_and(|r| r.phase == DumpPhase::Completed) {
            None
        } else {
            jobs.get_opt(&job_name).await.map_err(kube_error(
                "read",
                format!("Job {}/{job_name}", data_dump.namespace),
            ))?
        };
        if let Some(job) = &existing
            && !dump::owned_by(job, &uid)
        {
            fail(
                format!(
                    "{which}: a Job {}/{job_name} exists that this Backup did not create: delete it, or rename the dump",
                    data_dump.namespace
                ),
                &mut statuses,
            );
            continue;
        }
        let state = existing
            .as_ref()
            .map(|job| verify::job_state(&serde_json::to_value(job).unwrap_or_default()));
        match dump::step(index, data_dump, &job_name, state.as_ref(), recorded, now) {
            dump::Step::Done => {
                let done = recorded.expect("a completed dump is recorded").clone();
                entries.push(archive::DumpEntry {
                    namespace: done.namespace.clone(),
                    name: done.name.clone(),
                    key: done.key.clone().unwrap_or_else(|| key.clone()),
                    sha256: done.sha256.clone().unwrap_or_default(),
                    bytes: done.bytes.unwrap_or_default(),
                });
                statuses.push(done);
            }
            dump::Step::Fail(why) => fail(why, &mut statuses),
            dump::Step::Wait { deadline } => {
                until = Some(until.map_or(deadline, |u| u.min(deadline)));
                statuses.push(dump::status(
                    data_dump,
                    &job_name,
                    &key,
                    DumpPhase::Running,
                    None,
                    None,
                ));
            }
            dump::Step::Start => {
                match start_dump(ctx, backup, store, data_dump, &key, recipients).await? {
                    Ok(()) => {
                        let deadline = now
                            .checked_add(
                                k8s_openapi::jiff::SignedDuration::try_from(dump::timeout(
                                    data_dump,
                                ))
                                .unwrap_or(k8s_openapi::jiff::SignedDuration::MAX),
                            )
                            .unwrap_or(Timestamp::MAX);
                        until = Some(until.map_or(deadline, |u| u.min(deadline)));
                        statuses.push(dump::status(
                            data_dump,
                            &job_name,
                            &key,
                            DumpPhase::Running,
                            None,
                            None,
                        ));
                        info!(backup = %name, job = %job_name, namespace = %data_dump.namespace, "data-dump Job started");
                        publish(
                            ctx,
                            backup,
                            EventType::Normal,
                            "DataDumpStarted",
                            format!(
                                "{which}: Job {}/{job_name} started, uploading to {key}",
                                data_dump.namespace
                            ),
                        )
                        .await;
                    }
                    Err(why) => fail(format!("{which}: {why}"), &mut statuses),
                }
            }
            dump::Step::Check => {
                // The Job is done: its URL goes first.
                delete_upload_secret(ctx, data_dump, &job_name).await?;
                let found = store
                    .digest(&key, archive::AGE_HEADER_LIMIT)
                    .await
                    .map_err(|error| Error::Store(error.to_string()))?;
                match dump::check_upload(index, data_dump, &job_name, &key, found.as_ref()) {
                    Some(mut why) => {
                        if found.is_some() {
                            // It may be plaintext: it must not stay readable in the store.
                            why.push_str(&match store.delete(&key).await {
                                Ok(()) => "; it was deleted from the store (a versioned bucket keeps its version, hidden: remove that by hand once its object lock allows)".to_owned(),
                                Err(_) => format!(
                                    "; the operator could not delete it (object lock?): remove {key} from the store"
                                ),
                            });
                        }
                        fail(why, &mut statuses)
                    }
                    None => {
                        let found = found.expect("checked above");
                        info!(backup = %name, job = %job_name, bytes = found.bytes, "data dump uploaded");
                        publish(
                            ctx,
                            backup,
                            EventType::Normal,
                            "DataDumpCompleted",
                            format!(
                                "{which}: {} bytes with SHA-256 {} at {key}",
                                found.bytes, found.sha256
                            ),
                        )
                        .await;
                        entries.push(archive::DumpEntry {
                            namespace: data_dump.namespace.clone(),
                            name: data_dump.job.name.clone(),
                            key: key.clone(),
                            sha256: found.sha256.clone(),
                            bytes: found.bytes,
                        });
                        statuses.push(dump::status(
                            data_dump,
                            &job_name,
                            &key,
                            DumpPhase::Completed,
                            Some((&found.sha256, found.bytes)),
                            None,
                        ));
                    }
                }
            }
        }
    }
    let outcome = match (failure, until) {
        (Some(failure), _) => Dumps::Failed(failure),
        (None, Some(until)) => Dumps::Waiting { until },
        (None, None) => Dumps::Done(entries),
    };
    Ok((outcome, statuses))
}

/// Creates the upload Secret (a fresh URL) and the Job of one dump. The inner error is why
/// it cannot run.
async fn start_dump(
    ctx: &Context,
    backup: &Backup,
    store: &Store,
    data_dump: &crate::api::backup_schedule::DataDump,
    key: &str,
    recipients: &[String],
) -> Result<Result<(), String>, Error> {
    let name = backup.name_any();
    let uid = backup.uid().unwrap_or_default();
    let namespace = &data_dump.namespace;
    let job = match dump::job(data_dump, &name, &uid, key, recipients) {
        Ok(job) => job,
        Err(why) => return Ok(Err(why)),
    };
    let job_name = job.name_any();
    // Never over something already there: the store is write-once.
    if store
        .exists(key)
        .await
        .map_err(|error| Error::Store(error.to_string()))?
    {
        return Ok(Err(format!(
            "{key} already exists in the store (an earlier attempt, or another backup of the same name): it is never overwritten; create a new Backup"
        )));
    }
    let url = store
        .presign(
            reqwest::Method::PUT,
            key,
            dump::timeout(data_dump) + dump::URL_MARGIN,
        )
        .await
        .map_err(|error| Error::Store(error.to_string()))?;
    let mut secret = dump::secret(data_dump, &name, &uid, String::new());
    secret.string_data = None;
    secret.data = Some(BTreeMap::from([(
        dump::URL_KEY.to_owned(),
        ByteString(url.into_bytes()),
    )]));
    let secret_name = secret.name_any();
    match Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .patch(
            &secret_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if [400, 403, 404, 422].contains(&status.code) => {
            return Ok(Err(format!(
                "the upload Secret {namespace}/{secret_name} was refused by the API server: {}",
                status.message
            )));
        }
        Err(error) => {
            return Err(kube_error(
                "create",
                format!("Secret {namespace}/{secret_name}"),
            )(error));
        }
    }
    match Api::<Job>::namespaced(ctx.client.clone(), namespace)
        .create(&PostParams::default(), &job)
        .await
    {
        Ok(_) => Ok(Ok(())),
        Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(Ok(())),
        Err(kube::Error::Api(status)) if [400, 403, 404, 422].contains(&status.code) => {
            delete_upload_secret(ctx, data_dump, &job_name).await?;
            Ok(Err(format!(
                "the Job {namespace}/{job_name} was refused by the API server: {}",
                status.message
            )))
        }
        Err(error) => Err(kube_error("create", format!("Job {namespace}/{job_name}"))(
            error,
        )),
    }
}

/// Whether the operator may delete `resource` in `namespace`, as the API server decides.
async fn may_delete(
    client: &Client,
    namespace: &str,
    group: &str,
    resource: &str,
) -> Result<bool, Error> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                verb: Some("delete".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(kube_error(
            "ask whether it may delete",
            format!("{resource} in {namespace}"),
        ))?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

async fn delete_upload_secret(
    ctx: &Context,
    data_dump: &crate::api::backup_schedule::DataDump,
    job_name: &str,
) -> Result<(), Error> {
    let secret = dump::secret_name(job_name);
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &data_dump.namespace);
    let object = format!("{}/{secret}", data_dump.namespace);
    match secrets.delete(&secret, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        // Not allowed to delete there (the namespace is not in the chart's
        // backup.dataDumpNamespaces): empty it, with the `patch` the operator has, if it
        // is there at all.
        Err(kube::Error::Api(status)) if status.code == 403 => {
            let empty = json!({"data": null});
            match secrets
                .patch(&secret, &PatchParams::default(), &Patch::Merge(&empty))
                .await
            {
                Ok(_) => {
                    warn!(secret = %object, "may not delete the upload Secret: emptied it instead");
                    Ok(())
                }
                Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
                Err(error) => Err(kube_error("empty the upload Secret", object)(error)),
            }
        }
        Err(error) => Err(kube_error("delete the upload Secret", object)(error)),
    }
}

/// Deletes the upload Secret of every dump of the backup.
async fn delete_upload_secrets(ctx: &Context, backup: &Backup) -> Result<(), Error> {
    let name = backup.name_any();
    for data_dump in &backup.spec.data_dumps {
        delete_upload_secret(ctx, data_dump, &dump::job_name(&name, &data_dump.job.name)).await?;
    }
    Ok(())
}

/// Stops the dump Jobs of a failed backup that still run: they hold upload URLs. Finished
/// ones stay, for their logs.
async fn stop_dump_jobs(ctx: &Context, backup: &Backup) -> Result<(), Error> {
    let name = backup.name_any();
    let uid = backup.uid().unwrap_or_default();
    for data_dump in &backup.spec.data_dumps {
        let job_name = dump::job_name(&name, &data_dump.job.name);
        let jobs = Api::<Job>::namespaced(ctx.client.clone(), &data_dump.namespace);
        let object = format!("Job {}/{job_name}", data_dump.namespace);
        let Some(job) = jobs
            .get_opt(&job_name)
            .await
            .map_err(kube_error("read", object.clone()))?
        else {
            continue;
        };
        let running = matches!(
            verify::job_state(&serde_json::to_value(&job).unwrap_or_default()),
            verify::JobState::Running { .. }
        );
        if !running || !dump::owned_by(&job, &uid) {
            continue;
        }
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        match jobs.delete(&job_name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            // Its deadline (the dump's timeout) stops it; its URL is gone with the Secret.
            Err(kube::Error::Api(status)) if status.code == 403 => {
                warn!(job = %object, "may not stop the Job of a failed backup: its deadline will");
            }
            Err(error) => return Err(kube_error("stop", object)(error)),
        }
    }
    Ok(())
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
