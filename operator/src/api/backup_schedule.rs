//! BackupSchedule: when to back up what, where, encrypted to whom, kept how long, and how
//! often to prove a backup restores.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Cron, DNS_LABEL, Duration, JobTemplate, NamespacedRef, time_zone_schema};

/// A backup schedule. Each run creates a Backup object that records what was written.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "resurgo.dev",
    version = "v1alpha1",
    kind = "BackupSchedule",
    doc = "When to back up which namespaces, to which store, encrypted to whom, kept how long, and how often to prove a backup restores.",
    plural = "backupschedules",
    shortname = "bsched",
    category = "resurgo",
    status = "BackupScheduleStatus",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Store", type_ = "string", json_path = ".spec.store"),
    printcolumn(
        name = "Last-Backup",
        type_ = "date",
        json_path = ".status.lastSuccessfulBackupTime"
    ),
    printcolumn(
        name = "Last-Verified",
        type_ = "date",
        json_path = ".status.lastVerifiedTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    // The name is the value of a label on the Backups it makes and its restore tests'
    // namespaces, and label values have at most 63 characters.
    validation = Rule::new("self.metadata.name.size() <= 63")
        .message("a BackupSchedule name has at most 63 characters: it labels the Backups it makes and its restore tests' namespaces")
)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleSpec {
    /// When to run, as a cron expression such as `30 2 * * *` (02:30 every day).
    pub schedule: Cron,

    /// The time zone the cron expression is read in, such as Europe/Rome. Default: UTC.
    #[serde(default = "utc")]
    #[schemars(schema_with = "time_zone_schema")]
    pub time_zone: String,

    /// Name of the BackupStore to write to.
    #[schemars(length(min = 1, max = 253))]
    pub store: String,

    /// What to back up.
    pub include: Selection,

    /// Kinds never backed up, on top of the built-in excludes (Events, Pods, ReplicaSets,
    /// Endpoints, EndpointSlices, Leases and objects owned by a controller, which are
    /// recreated by their owners).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "set"))]
    pub exclude_kinds: Vec<String>,

    /// Jobs that dump application data (a database dump, say) into the backup before the
    /// objects are read. S3 stores only: each Job gets the environment variables
    /// `RESURGO_DUMP_URL` (a pre-signed PUT URL for its one file, valid for its timeout plus
    /// 5 minutes, from a Secret deleted once the Job is done), `RESURGO_AGE_RECIPIENTS`
    /// (the recipients, one per line) and `RESURGO_DUMP_KEY`; it must encrypt its dump with
    /// age to the recipients and upload the file with a Content-Length, such as
    /// `curl -fT dump.age "$RESURGO_DUMP_URL"`. Plaintext is refused. The file's SHA-256
    /// goes into the manifest, and a restore checks it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["namespace".into(), "name".into()]))]
    pub data_dumps: Vec<DataDump>,

    /// Who can read the backups: they are encrypted to these age public keys. The private
    /// keys never enter the cluster; a restore takes one from a Secret given at recovery.
    pub encryption: Encryption,

    /// How many backups to keep.
    pub retention: Retention,

    /// Object lock for each backup written: it cannot be deleted or overwritten for this
    /// long, by anyone (the store must support object lock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutability: Option<Immutability>,

    /// Restore tests: how often to prove that the newest backup restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,

    /// While true no new backup starts. Pruning goes on.
    #[serde(default)]
    pub suspend: bool,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// Which objects a backup reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Selection {
    /// Namespaces to back up.
    #[schemars(length(min = 1, max = 256))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[schemars(inner(length(min = 1, max = 63), regex(pattern = DNS_LABEL)))]
    pub namespaces: Vec<String>,
    /// Only objects with these labels. Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    /// Only these kinds, such as Deployment, ConfigMap, Secret. Default: all kinds except
    /// the excluded ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "set"))]
    pub kinds: Vec<String>,
}

/// A data-dump Job that runs before the objects are read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataDump {
    /// Namespace the Job runs in.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub namespace: String,
    /// The Job.
    #[serde(flatten)]
    pub job: JobTemplate,
}

/// Encryption to age recipients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Encryption {
    /// age public keys (`age1...`), each once. Any one of the matching private keys can
    /// decrypt.
    // Not `x-kubernetes-list-type: set`: the API server's duplicate error quotes the
    // value, and a private key pasted twice would be printed. Errors on a whole list quote
    // nothing.
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = Rule::new("self.all(r, self.exists_one(x, x == r))")
        .message("each recipient must appear once"))]
    pub recipients: Vec<AgeRecipient>,
}

/// An age public key, `age1` followed by 58 bech32 characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgeRecipient(pub String);

impl JsonSchema for AgeRecipient {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AgeRecipient".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        age_recipient_schema()
    }
}

/// CEL: whether `self` holds an age identity (a private key, or a plugin's identity)
/// anywhere, in any case: pasted after a space, a `# ` or in lower case it is still one.
const HOLDS_AGE_IDENTITY: &str =
    "self.upperAscii().contains('AGE-SECRET-KEY-') || self.upperAscii().contains('AGE-PLUGIN-')";

// Every rule here has the reason FieldValueForbidden, and there is no `pattern` or
// `enum`: the API server quotes the value of a string in an Invalid error (CEL or
// OpenAPI), and a recipient that fails may be a private key pasted by mistake, which
// must not reach CI logs and audit trails. Forbidden, Required and TooLong errors never
// quote the value.
fn age_recipient_schema() -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "maxLength": 128,
        "x-kubernetes-validations": [
            {
                "rule": format!("!({HOLDS_AGE_IDENTITY})"),
                "message": "this is an age private key: put only the public key (age1...) here; the private key must never enter the cluster",
                "reason": "FieldValueForbidden"
            },
            {
                "rule": format!("{HOLDS_AGE_IDENTITY} || self.matches('^age1[02-9ac-hj-np-z]{{58}}$')"),
                "message": "must be an age public key: age1 followed by 58 bech32 characters (the value is not shown, in case it is a secret)",
                "reason": "FieldValueForbidden"
            }
        ]
    })
}

/// How many backups to keep. Retention never deletes the newest verified backups, and
/// deletes nothing while an Incident is open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.keepLast + self.keepDaily + self.keepWeekly + self.keepMonthly > 0")
    .message("retention must keep at least one backup: set keepLast, keepDaily, keepWeekly or keepMonthly"))]
pub struct Retention {
    /// Keep the newest N backups.
    #[serde(default)]
    #[schemars(range(max = 1000))]
    pub keep_last: u32,
    /// Keep the newest backup of each of the last N days.
    #[serde(default)]
    #[schemars(range(max = 1000))]
    pub keep_daily: u32,
    /// Keep the newest backup of each of the last N weeks.
    #[serde(default)]
    #[schemars(range(max = 1000))]
    pub keep_weekly: u32,
    /// Keep the newest backup of each of the last N months.
    #[serde(default)]
    #[schemars(range(max = 1000))]
    pub keep_monthly: u32,
}

/// Object lock for each backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Immutability {
    /// How long each backup stays locked, such as 720h (30 days).
    pub period: Duration,
    /// Refuse to back up (rather than warn) when the store cannot lock objects or when the
    /// operator's credentials could delete them.
    #[serde(default)]
    pub required: bool,
}

/// Restore tests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// When to verify the newest backup, as a cron expression in the schedule's time zone.
    pub schedule: Cron,
    /// Restore the backup for real into a scratch namespace per namespace it holds
    /// (restricted Pod Security, default-deny network policy, deleted after the test),
    /// read every object back and compare it with the backup, then run the checks. When
    /// false, the backup is only decrypted and compared with its manifest.
    #[serde(default = "yes")]
    pub restore: bool,
    /// Secret holding the age private key (key `identity`) used to decrypt for the test;
    /// supplied by the operators of the verification, never generated in the cluster.
    pub identity_secret_ref: NamespacedRef,
    /// Jobs that must succeed against the restored copy, each within its timeout. They
    /// run as `check-<name>` in the copy of the first namespace of the selection (a Job
    /// finds that namespace through the downward API); only with `restore`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub checks: Vec<JobTemplate>,
}

fn yes() -> bool {
    true
}

/// What the schedule has done.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (the schedule is valid and its store usable) and Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Name of the newest Backup this schedule created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
    /// When the newest successful backup completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup_time: Option<Time>,
    /// When a backup of this schedule was last verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified_time: Option<Time>,
    /// When the next backup is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<Time>,
    /// When the next restore test is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_verification: Option<Time>,
    /// True while an open Incident freezes pruning.
    #[serde(default)]
    pub pruning_frozen: bool,
}
