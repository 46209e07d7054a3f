//! Data dumps, the pure part: where a dump goes in the store, the Job that makes it and the
//! Secret that lets it upload, and what the Jobs of a backup say together. The Backup
//! controller ([`super::run_backup`]) does the I/O.
//!
//! A dump never passes through the operator: its Job encrypts the data with age to the
//! backup's recipients and uploads the file itself, with a pre-signed S3 PUT URL for that
//! one key. The URL lives in a Secret owned by the Backup, given to the Job's containers as
//! `RESURGO_DUMP_URL` through a `secretKeyRef`, and deleted as soon as the Job is done. The
//! operator then reads the file back, checks it is age, and records its SHA-256 and size in
//! the manifest.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::{Container, EnvVar, EnvVarSource, Secret, SecretKeySelector},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
    jiff::{SignedDuration, Timestamp},
};

use super::{archive, verify::JobState};
use crate::{
    api::{
        backup::{DumpPhase, DumpStatus},
        backup_schedule::DataDump,
    },
    labels,
};

/// Label on a dump's Job and Secret: the dump's name in `spec.dataDumps`. The Backup
/// controller watches the Jobs carrying it.
pub const DUMP_LABEL: &str = "resurgo.dev/data-dump";
/// The Secret key holding the pre-signed URL.
pub const URL_KEY: &str = "url";
/// Environment variable with the pre-signed PUT URL (from the Secret).
pub const URL_ENV: &str = "RESURGO_DUMP_URL";
/// Environment variable with the backup's age recipients, one per line.
pub const RECIPIENTS_ENV: &str = "RESURGO_AGE_RECIPIENTS";
/// Environment variable with the dump's key in the store.
pub const KEY_ENV: &str = "RESURGO_DUMP_KEY";
/// How long a dump may run when its template sets no timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How much longer than the Job's timeout its upload URL stays valid: the upload may end
/// just before the timeout.
pub const URL_MARGIN: Duration = Duration::from_secs(5 * 60);

/// The dump's key in the store, under the backup's location.
pub fn key(location: &str, dump: &DataDump) -> String {
    format!("{location}dumps/{}/{}.age", dump.namespace, dump.job.name)
}

/// The dump's timeout.
pub fn timeout(dump: &DataDump) -> Duration {
    dump.job
        .timeout
        .as_ref()
        .and_then(|t| t.to_std().ok())
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// The Job's name: `<backup>-<dump>`, the same on every reconcile. Cut to 63 characters
/// (a Job's name is a label value on its pods) with a hash of the whole name when longer.
pub fn job_name(backup: &str, dump: &str) -> String {
    let whole: String = format!("{backup}-{dump}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if whole.len() <= 63 {
        return whole;
    }
    let hash = &archive::sha256_hex(whole.as_bytes())[..10];
    let head = whole[..63 - 11].trim_end_matches('-');
    format!("{head}-{hash}")
}

/// The name of the Secret with the Job's upload URL.
pub fn secret_name(job: &str) -> String {
    format!("{job}-upload")
}

fn owner(backup: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "resurgo.dev/v1alpha1".into(),
        kind: "Backup".into(),
        name: backup.into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

fn metadata(name: &str, dump: &DataDump, backup: &str, uid: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(dump.namespace.clone()),
        labels: Some(BTreeMap::from([
            (DUMP_LABEL.to_owned(), dump.job.name.clone()),
            (
                labels::MANAGED_BY_KEY.to_owned(),
                labels::MANAGED_BY.to_owned(),
            ),
        ])),
        owner_references: Some(vec![owner(backup, uid)]),
        ..Default::default()
    }
}

/// The Secret holding the pre-signed URL.
pub fn secret(dump: &DataDump, backup: &str, uid: &str, url: String) -> Secret {
    Secret {
        metadata: metadata(
            &secret_name(&job_name(backup, &dump.job.name)),
            dump,
            backup,
            uid,
        ),
        string_data: Some(BTreeMap::from([(URL_KEY.to_owned(), url)])),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// The dump's Job: the template's spec, with the three variables in every container and
/// `activeDeadlineSeconds` no longer than the timeout (the Job controller stops it then).
/// The error says why the template is not a JobSpec.
pub fn job(
    dump: &DataDump,
    backup: &str,
    uid: &str,
    key: &str,
    recipients: &[String],
) -> Result<Job, String> {
    let mut spec: JobSpec = serde_json::from_value(dump.job.spec.clone())
        .map_err(|error| format!("the spec is not a valid JobSpec: {error}"))?;
    let name = job_name(backup, &dump.job.name);
    let deadline = timeout(dump).as_secs().max(1) as i64;
    spec.active_deadline_seconds = Some(
        spec.active_deadline_seconds
            .map_or(deadline, |d| d.min(deadline)),
    );
    let env = [
        EnvVar {
            name: URL_ENV.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret_name(&name),
                    key: URL_KEY.into(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        EnvVar {
            name: RECIPIENTS_ENV.into(),
            value: Some(recipients.join("\n")),
            ..Default::default()
        },
        EnvVar {
            name: KEY_ENV.into(),
            value: Some(key.into()),
            ..Default::default()
        },
    ];
    for container in containers_mut(&mut spec) {
        let vars = container.env.get_or_insert_with(Vec::new);
        vars.retain(|v| ![URL_ENV, RECIPIENTS_ENV, KEY_ENV].contains(&v.name.as_str()));
        vars.extend(env.iter().cloned());
    }
    Ok(Job {
        metadata: metadata(&name, dump, backup, uid),
        spec: Some(spec),
        status: None,
    })
}

/// Whether the Job is one this backup made (its owner reference has the Backup's uid).
pub fn owned_by(job: &Job, uid: &str) -> bool {
    job.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "Backup" && o.uid == uid)
}

/// Where one dump stands, from its Job (read from the API server) and its recorded status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Recorded as completed: never run again.
    Done,
    /// No Job yet, and none was ever made: create the Secret and the Job.
    Start,
    /// The Job runs; it times out at `deadline`.
    Wait { deadline: Timestamp },
    /// The Job completed: check the upload.
    Check,
    /// The dump failed, in words.
    Fail(String),
}

/// What to do for the dump `index` of the spec. `job` is the Job of that name in its
/// namespace, as the API server has it; `recorded` is the dump's status entry.
pub fn step(
    index: usize,
    dump: &DataDump,
    job_name: &str,
    job: Option<&JobState>,
    recorded: Option<&DumpStatus>,
    now: Timestamp,
) -> Step {
    let which = || {
        format!(
            "spec.dataDumps[{index}] ({}/{}): Job {}/{job_name}",
            dump.namespace, dump.job.name, dump.namespace
        )
    };
    if recorded.is_some_and(|r| r.phase == DumpPhase::Completed) {
        return Step::Done;
    }
    match job {
        None if recorded.is_some() => {
            Step::Fail(format!("{} was deleted before it completed", which()))
        }
        None => Step::Start,
        Some(JobState::Complete) => Step::Check,
        Some(JobState::Failed(why)) => Step::Fail(format!("{} failed: {why}", which())),
        Some(JobState::Running { created }) => {
            let limit = timeout(dump);
            let deadline = created
                .checked_add(SignedDuration::try_from(limit).unwrap_or(SignedDuration::MAX))
                .unwrap_or(Timestamp::MAX);
            if deadline <= now {
                Step::Fail(format!(
                    "{} did not finish within its timeout of {}",
                    which(),
                    crate::api::common::Duration::from(limit)
                ))
            } else {
                Step::Wait { deadline }
            }
        }
    }
}

/// The status entry of a dump.
pub fn status(
    dump: &DataDump,
    job: &str,
    key: &str,
    phase: DumpPhase,
    found: Option<(&str, u64)>,
    message: Option<String>,
) -> DumpStatus {
    DumpStatus {
        name: dump.job.name.clone(),
        namespace: dump.namespace.clone(),
        job: job.into(),
        phase,
        key: Some(key.into()),
        sha256: found.map(|(sha, _)| sha.to_owned()),
        bytes: found.map(|(_, bytes)| bytes),
        message,
    }
}

/// Why an uploaded dump is refused (`None`: it is a well-formed age file). `found` is what
/// the store holds at its key, with its first bytes.
pub fn check_upload(
    index: usize,
    dump: &DataDump,
    job_name: &str,
    key: &str,
    found: Option<&super::store::Digest256>,
) -> Option<String> {
    let which = format!(
        "spec.dataDumps[{index}] ({}/{}): Job {}/{job_name}",
        dump.namespace, dump.job.name, dump.namespace
    );
    match found {
        None => Some(format!(
            "{which}: the Job completed but uploaded nothing to {key}"
        )),
        Some(found) => archive::check_age_header(&found.head)
            .err()
            .map(|why| format!("{which}: the file it uploaded to {key} is refused: {why}")),
    }
}

/// Every container and init container of a Job's pod: what the operator gives a Job (its
/// upload or download URLs) must reach whichever of them does the work.
pub fn containers_mut(spec: &mut JobSpec) -> impl Iterator<Item = &mut Container> {
    let pod = spec.template.spec.get_or_insert_with(Default::default);
    pod.containers
        .iter_mut()
        .chain(pod.init_containers.iter_mut().flatten())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::common::JobTemplate;

    fn dump(timeout: Option<&str>) -> DataDump {
        DataDump {
            namespace: "clinical-records".into(),
            job: JobTemplate {
                name: "fse-dump".into(),
                spec: json!({"activeDeadlineSeconds": 99999, "template": {"spec": {"restartPolicy": "Never",
                    "initContainers": [{"name": "wait", "image": "busybox"}],
                    "containers": [{"name": "dump", "image": "pg:16",
                                    "env": [{"name": "RESURGO_DUMP_URL", "value": "forged"}, {"name": "PGHOST", "value": "db"}]}]}}}),
                timeout: timeout.map(Into::into),
            },
        }
    }

    #[test]
    fn job_names_are_stable_and_fit_in_a_label() {
        assert_eq!(
            job_name("nightly-202611240230", "fse-dump"),
            "nightly-202611240230-fse-dump"
        );
        let long = "lazio-clinical-nightly-with-a-very-long-schedule-name.202611240230";
        let name = job_name(long, "fse-dump");
        assert_eq!(name.len(), 63, "{name}");
        assert_eq!(name, job_name(long, "fse-dump"));
        assert_ne!(name, job_name(long, "fse-dump2"));
        assert!(!name.contains('.'));
        assert!(secret_name(&name).len() <= 253);
    }

    #[test]
    fn the_job_gets_the_url_from_its_secret_and_the_recipients_in_every_container() {
        let job = job(
            &dump(Some("2h")),
            "bk",
            "uid-1",
            "backups/bk/dumps/clinical-records/fse-dump.age",
            &["age1a".into(), "age1b".into()],
        )
        .unwrap();
        let value = serde_json::to_value(&job).unwrap();
        assert_eq!(value["metadata"]["name"], "bk-fse-dump");
        assert_eq!(value["metadata"]["namespace"], "clinical-records");
        assert_eq!(value["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(value["metadata"]["labels"][DUMP_LABEL], "fse-dump");
        assert_eq!(value["spec"]["activeDeadlineSeconds"], 7200);
        let pod = &value["spec"]["template"]["spec"];
        for container in [&pod["containers"][0], &pod["initContainers"][0]] {
            let env = container["env"].as_array().unwrap();
            let var = |name: &str| env.iter().find(|v| v["name"] == name).cloned();
            // The template cannot set the URL itself.
            assert_eq!(env.iter().filter(|v| v["name"] == URL_ENV).count(), 1);
            assert_eq!(
                var(URL_ENV).unwrap()["valueFrom"]["secretKeyRef"],
                json!({"name": "bk-fse-dump-upload", "key": "url", "optional": false})
            );
            assert_eq!(var(RECIPIENTS_ENV).unwrap()["value"], "age1a\nage1b");
            assert_eq!(
                var(KEY_ENV).unwrap()["value"],
                "backups/bk/dumps/clinical-records/fse-dump.age"
            );
        }
        assert_eq!(pod["containers"][0]["env"][0]["name"], "PGHOST");
        let secret =
            serde_json::to_value(secret(&dump(None), "bk", "uid-1", "https://u".into())).unwrap();
        assert_eq!(secret["metadata"]["name"], "bk-fse-dump-upload");
        assert_eq!(secret["stringData"]["url"], "https://u");
        assert!(
            job_with_bad_spec()
                .unwrap_err()
                .contains("not a valid JobSpec")
        );
    }

    fn job_with_bad_spec() -> Result<Job, String> {
        let mut bad = dump(None);
        bad.job.spec = json!({"template": "not a pod"});
        job(&bad, "bk", "u", "k", &[])
    }

    #[test]
    fn a_dump_is_started_once_waited_for_until_its_timeout_and_never_rerun() {
        let dump = dump(Some("10m"));
        let at = |s: i64| Timestamp::from_second(1_780_000_000 + s).unwrap();
        let running = DumpStatus {
            name: "fse-dump".into(),
            namespace: "clinical-records".into(),
            job: "bk-fse-dump".into(),
            phase: DumpPhase::Running,
            key: None,
            sha256: None,
            bytes: None,
            message: None,
        };
        assert_eq!(step(0, &dump, "j", None, None, at(0)), Step::Start);
        let created = JobState::Running { created: at(0) };
        assert_eq!(
            step(0, &dump, "j", Some(&created), Some(&running), at(60)),
            Step::Wait { deadline: at(600) }
        );
        let Step::Fail(late) = step(0, &dump, "j", Some(&created), Some(&running), at(600)) else {
            panic!("a dump past its timeout fails");
        };
        assert_eq!(
            late,
            "spec.dataDumps[0] (clinical-records/fse-dump): Job clinical-records/j did not finish within its timeout of 10m"
        );
        let failed = JobState::Failed("BackoffLimitExceeded".into());
        assert!(
            matches!(step(2, &dump, "j", Some(&failed), None, at(1)), Step::Fail(m) if m.starts_with("spec.dataDumps[2]") && m.ends_with("failed: BackoffLimitExceeded"))
        );
        assert_eq!(
            step(
                0,
                &dump,
                "j",
                Some(&JobState::Complete),
                Some(&running),
                at(1)
            ),
            Step::Check
        );
        assert!(
            matches!(step(0, &dump, "j", None, Some(&running), at(1)), Step::Fail(m) if m.contains("deleted before it completed"))
        );
        let done = DumpStatus {
            phase: DumpPhase::Completed,
            ..running
        };
        assert_eq!(step(0, &dump, "j", None, Some(&done), at(1)), Step::Done);
    }
}
