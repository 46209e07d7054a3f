//! Incident: the one switch that starts a recovery, or a drill of it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{DNS_LABEL, NamespacedRef, WrittenSecret};

/// An incident. Applying one locks access down, invalidates the tokens of the
/// ServiceAccounts of the namespaces it names, freezes backup pruning, chooses a clean
/// restore point for every service, runs the recovery plans in tier order and regenerates
/// credentials, recording each step in `status.timeline`. Setting `state: Closed` lifts
/// the lockdown and the pruning freeze. In `Drill` mode the plans are rebuilt into
/// isolated copies of their namespaces, measured against their RTOs and cleaned up.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "resurgo.dev",
    version = "v1alpha1",
    kind = "Incident",
    doc = "The switch that starts a recovery (or a drill): lock access down, freeze pruning, choose clean restore points, rebuild in tier order, rotate credentials.",
    plural = "incidents",
    shortname = "inc",
    category = "resurgo",
    status = "IncidentStatus",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "State", type_ = "string", json_path = ".spec.state"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Compromised-Since",
        type_ = "date",
        json_path = ".spec.compromisedSince"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    // The name is the value of a label on the copies its drills make, and label values have at
    // most 63 characters.
    validation = Rule::new("self.metadata.name.size() <= 63")
        .message("an Incident name has at most 63 characters: it labels the copies its drills make")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.accessPolicies) || has(self.recoveryPlans) || has(self.invalidateServiceAccountTokens)")
    .message("an incident must name at least one of accessPolicies, recoveryPlans or invalidateServiceAccountTokens"))]
#[x_kube(validation = Rule::new("!has(self.invalidateServiceAccountTokens) || self.mode == 'Real'")
    .message("invalidateServiceAccountTokens is for a Real incident: a Drill never touches real ServiceAccounts")
    .field_path(".invalidateServiceAccountTokens"))]
#[x_kube(validation = Rule::new("!(oldSelf.state == 'Closed' && self.state == 'Open')")
    .message("a closed incident cannot be reopened: create a new Incident")
    .field_path(".state"))]
pub struct IncidentSpec {
    /// The last moment the systems are known to have been clean. Restore points are taken
    /// from backups completed before it.
    pub compromised_since: Time,

    /// `Real` (default) recovers the real namespaces; `Drill` rebuilds isolated copies and
    /// cleans them up. It cannot change once the incident exists.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("mode cannot change once the incident exists: close it and create a new Incident"))]
    pub mode: IncidentMode,

    /// `Open` while the incident runs; set `Closed` to lift the lockdown and the pruning
    /// freeze. A closed incident cannot be reopened.
    #[serde(default)]
    pub state: IncidentState,

    /// AccessPolicies to switch to Lockdown while the incident is open.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 32), extend("x-kubernetes-list-type" = "set"))]
    pub access_policies: Vec<String>,

    /// RecoveryPlans to run, in tier order across plans.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 32), extend("x-kubernetes-list-type" = "set"))]
    pub recovery_plans: Vec<String>,

    /// How to choose the backup each service is restored from.
    #[serde(default)]
    pub restore_point: RestorePoint,

    /// Regenerate the credentials the plans list (`regenerateSecrets`) instead of
    /// restoring them. Default: true.
    #[serde(default = "yes")]
    pub rotate_credentials: bool,

    /// Settings of a drill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<Drill>,

    /// Invalidate every token of the ServiceAccounts of these namespaces (step
    /// InvalidateServiceAccountTokens, right after Lockdown; Real incidents only). Read when
    /// the step runs; a change after it finished does nothing: create a new Incident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalidate_service_account_tokens: Option<TokenInvalidation>,
}

fn yes() -> bool {
    true
}

/// Real recovery or drill.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum IncidentMode {
    #[default]
    Real,
    Drill,
}

/// Open or closed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum IncidentState {
    #[default]
    Open,
    Closed,
}

/// The rule for choosing restore points.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.rule == 'Named' ? has(self.backup) : !has(self.backup)")
    .message("backup is required when rule is Named, and only then")
    .field_path(".backup"))]
pub struct RestorePoint {
    /// `NewestCleanBefore` (default): per service, the newest backup that completed before
    /// compromisedSince, matches its manifest and is verified. `Named`: the backup named in
    /// `backup`, for every service.
    #[serde(default)]
    pub rule: RestorePointRule,
    /// The Backup to use with rule `Named`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub backup: Option<String>,
    /// Also accept a backup that is intact (matches its manifest) but was never verified by
    /// a restore test, when no verified one exists.
    #[serde(default)]
    pub allow_unverified: bool,
}

/// How restore points are chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RestorePointRule {
    #[default]
    NewestCleanBefore,
    Named,
}

/// Drill settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Drill {
    /// Prefix of the isolated namespace copies. Default: `drill-`.
    #[serde(default = "drill_prefix")]
    #[schemars(length(min = 1, max = 20), regex(pattern = "^[a-z0-9]([-a-z0-9]*)$"))]
    pub namespace_prefix: String,
    /// Delete everything the drill created once it is measured. Default: true.
    #[serde(default = "yes")]
    pub clean_up: bool,
}

fn drill_prefix() -> String {
    "drill-".to_owned()
}

/// Which ServiceAccounts lose their tokens. Each one of the namespaces, except those kept
/// and the operator's own, is deleted and created again with the same secrets,
/// imagePullSecrets, automountServiceAccountToken, labels and annotations: it gets a new
/// uid, and every token bound to the old uid is refused from then on (those from
/// `kubectl create token` and the ones pods mount). Its legacy token Secrets (type
/// `kubernetes.io/service-account-token`) are deleted. Bindings to it are not changed: they
/// name it, and hold for the new one. Pods running as it are not restarted: their mounted
/// token is refused until the kubelet requests a new one (at 80% of its life, about 48
/// minutes with the default hour) or the pod restarts. The operator may do this only in the
/// namespaces of the chart's `incident.tokenInvalidationNamespaces`; a namespace outside it
/// fails the step before anything is deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.keep) || self.keep.all(k, k.namespace in self.namespaces)")
    .message("every ServiceAccount in keep must be in one of namespaces")
    .field_path(".keep"))]
pub struct TokenInvalidation {
    /// The namespaces whose ServiceAccounts lose their tokens. One that does not exist has
    /// none, and the step says so.
    #[schemars(length(min = 1, max = 32), extend("x-kubernetes-list-type" = "set"))]
    #[schemars(inner(length(min = 1, max = 63), regex(pattern = DNS_LABEL)))]
    pub namespaces: Vec<String>,
    /// ServiceAccounts left as they are, tokens and all: those of life-critical workloads
    /// that must keep talking to the API server without a pause. Their tokens stay valid,
    /// including any an attacker took.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["namespace".into(), "name".into()]))]
    pub keep: Vec<NamespacedRef>,
}

/// What the incident has done so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IncidentStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, LockingDown, Recovering, Recovered, Failed or Closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<IncidentPhase>,
    /// Ready (every plan recovered), Progressing and Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Each step done, in order, with its times.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<TimelineEntry>,
    /// The backup chosen for each service and the data it implies losing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restore_points: Vec<ChosenRestorePoint>,
    /// Time to ready per tier against its RTO (filled by drills and real recoveries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<TierResult>,
    /// The credentials the RotateCredentials step gave fresh values, as written (uid and
    /// resourceVersion, never values), one entry per Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rotated_secrets: Vec<WrittenSecret>,
    /// The ServiceAccounts the InvalidateServiceAccountTokens step re-creates, each
    /// recorded before it is deleted, with what it is created again with; `uid` once it is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reissued_service_accounts: Vec<ReissuedServiceAccount>,
}

/// One ServiceAccount re-created so that its tokens stop working. The operator's own record:
/// a ServiceAccount counts as done only while its uid is `uid`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReissuedServiceAccount {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The uid it had: every token bound to it is refused once it is gone.
    pub replaced_uid: String,
    /// The uid it was created again with; absent until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Its legacy token Secrets, deleted (names only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub legacy_token_secrets: Vec<String>,
    /// What it is created again with.
    pub saved: SavedServiceAccount,
}

/// The fields of a ServiceAccount that its re-creation keeps. Never a token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavedServiceAccount {
    /// Its labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Its annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The names in its `secrets`, without its legacy token Secrets (they are deleted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// The names in its `imagePullSecrets`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
    /// Its `automountServiceAccountToken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
}

/// Phase of an incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum IncidentPhase {
    Pending,
    LockingDown,
    Recovering,
    Recovered,
    Failed,
    Closed,
}

/// One step of the incident.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    /// The step: Lockdown, InvalidateServiceAccountTokens, FreezePruning,
    /// ChooseRestorePoints, Recover, RotateCredentials, LiftLockdown, UnfreezePruning, CleanUp.
    pub step: String,
    /// Running, Done or Failed.
    pub state: StepState,
    /// When it started.
    pub started: Time,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Time>,
    /// What it did, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// State of a timeline step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StepState {
    Running,
    Done,
    Failed,
}

/// The restore point chosen for one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChosenRestorePoint {
    /// The plan of the service.
    pub plan: String,
    /// The service.
    pub service: String,
    /// The Backup chosen; absent when none qualifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// When that backup completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_completed: Option<Time>,
    /// Time between the backup and compromisedSince: changes made in it are lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_loss_window: Option<String>,
    /// Why this backup, and why newer ones were refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Time to ready of one tier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TierResult {
    /// The plan.
    pub plan: String,
    /// The tier.
    pub tier: String,
    /// The RTO target.
    pub rto_target: String,
    /// How long the tier took to be ready, from the start of the recovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_ready: Option<String>,
    /// Whether it met the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
}
