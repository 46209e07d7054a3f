//! Backups that survive ransomware: the Backup, BackupSchedule and BackupStore controllers,
//! and the restore that the RecoveryPlan controller uses for `fromBackup` workloads.
//!
//! - [`archive`] (pure): the format, SHA-256 manifest, age encryption and every check a
//!   stored backup must pass before it is used.
//! - [`selection`] (pure): which kinds and objects are backed up, and how they are cleaned.
//! - [`retention`], [`restore_point`], [`cron`] (pure): what to delete, what to restore, when
//!   to run.
//! - [`store`]: the BackupStore as an `object_store` (filesystem or S3) and its probe;
//!   [`s3`]: the SigV4-signed S3 calls `object_store` lacks (object lock, versioned delete),
//!   with the timeouts every S3 request has; [`s3_answer`] (pure): what an S3 error answer
//!   means for the probe, so that only a refused delete reads as protection.
//! - [`engine`]: reading the cluster and the stores.
//! - [`verify`] (pure): restore tests' scratch namespaces, the comparison of the restored
//!   copy with the backup, and the check Jobs' verdict.
//! - [`dump`] (pure): data-dump Jobs, their upload Secrets and their keys in the store;
//!   [`dump_restore`]: download URLs for a `fromBackup` service's `dataRestore` Job.
//! - [`run_backup`], [`schedule`] (with restore tests), [`probe`]: one controller per kind.
//! - [`restore`]: the objects of a namespace from the clean restore point.
//!
//! # RBAC the backup controllers need
//!
//! On top of what the RecoveryPlan controller needs:
//!
//! | apiGroups | resources | verbs | why |
//! |---|---|---|---|
//! | `resurgo.dev` | `backups` | get, list, watch, create, delete | run backups; schedules create them, retention deletes them |
//! | `resurgo.dev` | `backups/status`, `backupschedules/status`, `backupstores/status` | get, patch, update | status, by server-side apply |
//! | `resurgo.dev` | `backupschedules`, `backupstores`, `incidents` | get, list, watch | the schedules, stores, and open incidents (which freeze pruning and name restore points) |
//! | `""` | `secrets` | get | S3 credentials and restore identities, by the names the specs give |
//! | `""` | `namespaces` | get, list, watch, create, patch, delete | restore tests' scratch namespaces, found again by label after a restart |
//! | `batch` | `jobs` | get, list, watch, create | restore tests' check Jobs and data-dump Jobs, watched so a finished one moves on at once |
//! | `""` | `secrets` | create, patch | data dumps' upload Secrets (granted for the RecoveryPlan controller already) |
//! | `""`, `batch` | `secrets`, `jobs` | delete, in the data-dump namespaces only (chart: `backup.dataDumpNamespaces`) | a finished dump's upload Secret; the Jobs of a failed backup that still run |
//! | `authorization.k8s.io` | `selfsubjectaccessreviews` | create | before a dump starts, whether it may delete there (`system:basic-user` grants it) |
//! | `networking.k8s.io` | `networkpolicies` | create, patch | the default-deny policy of a scratch namespace |
//! | `""` (events.k8s.io) | `events` | create, patch | Events |
//! | (discovery) | non-resource URLs `/api`, `/api/*`, `/apis`, `/apis/*` | get | find the kinds to back up (granted to every authenticated user by `system:discovery`) |
//!
//! And get + list on the kinds to back up, and nothing wider. A wildcard would give the
//! operator every Secret of the cluster; instead the chart lists the kinds, by default:
//!
//! | apiGroups | resources | verbs |
//! |---|---|---|
//! | `""` | configmaps, secrets, services, serviceaccounts, persistentvolumeclaims | get, list |
//! | `apps` | deployments, statefulsets, daemonsets | get, list |
//! | `batch` | jobs, cronjobs | get, list |
//! | `networking.k8s.io` | networkpolicies, ingresses | get, list |
//! | `rbac.authorization.k8s.io` | roles, rolebindings | get, list |
//! | `policy` | poddisruptionbudgets | get, list |
//! | `autoscaling` | horizontalpodautoscalers | get, list |
//!
//! A kind the operator may not list is left out of a backup whose selection names no kinds,
//! and the Backup's `Completed` condition lists what was left out; a selection that names
//! the kind fails instead. Restoring applies objects of these kinds, which the RecoveryPlan
//! controller's create/patch rules on them already cover; restore tests apply them for
//! real into scratch namespaces and read them back, which needs the same get/create/patch
//! rules.

pub mod archive;
pub mod cron;
pub mod dump;
pub mod dump_restore;
pub mod engine;
pub mod probe;
pub mod restore;
pub mod restore_point;
pub mod retention;
pub mod run_backup;
pub mod s3;
pub mod s3_answer;
pub mod schedule;
pub mod selection;
pub mod store;
pub mod verify;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Condition, jiff::Timestamp};
use kube::Client;

/// Label on the Backups a schedule creates: the schedule's name.
pub const SCHEDULE_LABEL: &str = "resurgo.dev/schedule";

/// Annotation on a BackupSchedule that freezes pruning while it is `"true"`; an open
/// Incident freezes it too.
pub const PRUNING_FROZEN_ANNOTATION: &str = "resurgo.dev/pruning-frozen";

/// Annotation on a Backup brought from another cluster (with its status, which records the
/// manifest hash): the Backup controller never runs it, and restores may use it.
pub const IMPORTED_ANNOTATION: &str = "resurgo.dev/imported";

/// What a reconcile could not do. Each variant names the object it failed on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {object}: {source}")]
    Kube {
        action: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    /// The store could not be read or signed for, for the moment.
    #[error("{0}")]
    Store(String),
}

pub(crate) fn kube_error(
    action: &'static str,
    object: impl Into<String>,
) -> impl FnOnce(kube::Error) -> Error {
    let object = object.into();
    move |source| Error::Kube {
        action,
        object,
        source,
    }
}

pub(crate) fn recorder(client: &Client) -> crate::events::Recorder {
    crate::events::Recorder::new(client.clone(), crate::events::reporter())
}

/// Conditions with their transition time kept when the status did not change.
pub(crate) fn conditions(
    previous: &[Condition],
    generation: Option<i64>,
    now: Timestamp,
    wanted: &[(&str, bool, &str, String)],
) -> Vec<Condition> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    wanted
        .iter()
        .map(|(type_, status, reason, message)| {
            let status = if *status { "True" } else { "False" };
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == *type_ && c.status == status)
                .map_or(Time(now), |c| c.last_transition_time.clone());
            Condition {
                type_: (*type_).into(),
                status: status.into(),
                reason: (*reason).into(),
                message: message.chars().take(2000).collect(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}
