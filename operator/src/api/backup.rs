//! Backup: one backup run, on a schedule or on demand, and what it wrote.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::backup_schedule::{DataDump, Encryption, Immutability, Selection};

/// One backup. A BackupSchedule creates one per run, copying its own settings into the
/// spec; create one by hand for an on-demand backup. The spec cannot change once created:
/// what a backup contains is fixed by its manifest.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "resurgo.dev",
    version = "v1alpha1",
    kind = "Backup",
    doc = "One backup run and what it wrote: items, bytes, the SHA-256 manifest of its content, where it lives, and whether a restore test verified it.",
    plural = "backups",
    shortname = "bk",
    category = "resurgo",
    status = "BackupStatus",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Items", type_ = "integer", json_path = ".status.items"),
    printcolumn(name = "Bytes", type_ = "integer", json_path = ".status.bytes"),
    printcolumn(
        name = "Verified",
        type_ = "string",
        json_path = ".status.verification.state"
    ),
    printcolumn(name = "Completed", type_ = "date", json_path = ".status.completed"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf")
    .message("the spec of a Backup cannot change: create a new Backup"))]
pub struct BackupSpec {
    /// The schedule that created this backup; empty for an on-demand backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub schedule: Option<String>,
    /// Name of the BackupStore to write to.
    #[schemars(length(min = 1, max = 253))]
    pub store: String,
    /// What to back up.
    pub include: Selection,
    /// Kinds never backed up, on top of the built-in excludes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "set"))]
    pub exclude_kinds: Vec<String>,
    /// Data-dump Jobs to run before the objects are read (S3 stores only). Each Job gets a
    /// pre-signed URL to upload one age-encrypted file to the backup's location; see
    /// `spec.dataDumps` of BackupSchedule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["namespace".into(), "name".into()]))]
    pub data_dumps: Vec<DataDump>,
    /// The age recipients the backup is encrypted to.
    pub encryption: Encryption,
    /// Object lock for what this backup writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutability: Option<Immutability>,
}

/// What the backup wrote and whether it was proven to restore.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// Pending, Running, Completed or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    /// Completed and Verified, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Number of objects (and data dumps) written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<u64>,
    /// Bytes written to the store, after encryption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// SHA-256 of the content manifest, which lists the SHA-256 of every item. A backup
    /// whose content does not match is never restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_sha256: Option<String>,
    /// Where the backup lives in its store (a key prefix or a directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// When the backup started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Time>,
    /// When the backup completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<Time>,
    /// The earliest time its schedule's retention may delete it: the end of the windows
    /// of the keepDaily/keepWeekly/keepMonthly rules that keep it (it is the newest backup
    /// of its UTC day, ISO week or month, kept until that many newer periods have begun)
    /// and of its object lock, whichever is later. Recomputed when the schedule's backups
    /// or retention change: a newer backup of the same day takes the day's place, and this
    /// time drops to when the backup completed. keepLast and the newest verified backup
    /// can keep it longer; periods without a backup lengthen the windows. Unset when only
    /// keepLast applies and there is no object lock (keepLast counts backups, not time),
    /// and on a backup of no schedule, which retention never deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Time>,
    /// Until when object lock protects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable_until: Option<Time>,
    /// The last restore test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationResult>,
    /// Why the backup failed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The data dumps of `spec.dataDumps`: their Jobs while they run, and once uploaded
    /// the SHA-256 and size of what each wrote (also in the manifest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["namespace".into(), "name".into()]))]
    pub dumps: Vec<DumpStatus>,
}

/// One data dump of a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DumpStatus {
    /// The dump's name in `spec.dataDumps`.
    pub name: String,
    /// The namespace its Job runs in.
    pub namespace: String,
    /// The Job that makes it.
    pub job: String,
    /// Running, Completed (uploaded and checked) or Failed.
    pub phase: DumpPhase,
    /// Where it is in the store, under the backup's location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// SHA-256 of the uploaded (encrypted) file, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Size of the uploaded file in bytes, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// What went wrong, for a failed dump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Phase of a data dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DumpPhase {
    Running,
    Completed,
    Failed,
}

/// Phase of a backup run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BackupPhase {
    Pending,
    Running,
    Completed,
    Failed,
}

/// Outcome of a restore test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationResult {
    /// Unverified, Verified or Failed.
    pub state: VerificationState,
    /// When the test ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// What the test found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Whether a backup was proven to restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum VerificationState {
    Unverified,
    Verified,
    Failed,
}
