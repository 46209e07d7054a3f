//! RecoveryPlan: which services to rebuild, in which priority tier, after what.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    DNS_LABEL, Duration, JobTemplate, NamespacedRef, WrittenSecret, embedded_objects_schema,
};

/// A recovery plan: the services of a platform grouped into ordered priority tiers, each
/// with its dependencies and what it takes to rebuild it. Applying a plan to a clean cluster
/// rebuilds every service, a tier only after the tiers before it are ready, a service only
/// after the services it depends on are ready.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "resurgo.dev",
    version = "v1alpha1",
    kind = "RecoveryPlan",
    doc = "Services grouped into ordered priority tiers with their dependencies: the operator rebuilds them in that order, each only after what it depends on is ready.",
    plural = "recoveryplans",
    shortname = "rp",
    category = "resurgo",
    status = "RecoveryPlanStatus",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Recovering, Recovered, Degraded or Failed"
    ),
    printcolumn(
        name = "Tier",
        type_ = "string",
        json_path = ".status.currentTier",
        description = "The tier being recovered now"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.ready",
        description = "Ready services out of all services"
    ),
    printcolumn(
        name = "RTO",
        type_ = "string",
        json_path = ".status.rto",
        description = "Whether every finished tier met its RTO target"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    // The name is the value of a label on every object the plan creates, and label values have
    // at most 63 characters.
    validation = Rule::new("self.metadata.name.size() <= 63")
        .message("a RecoveryPlan name has at most 63 characters: it labels every object the plan creates")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.services.all(s, self.tiers.exists(t, t.name == s.tier))")
    .message("every service's tier must be the name of one of spec.tiers")
    .field_path(".services")
    .reason(Reason::FieldValueInvalid))]
pub struct RecoveryPlanSpec {
    /// The priority tiers, most urgent first. Every service of a tier waits until every
    /// service of the tiers above it is ready (or given up, with `onFailure: Continue`).
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub tiers: Vec<Tier>,

    /// The services to rebuild. Names are unique within the plan.
    #[schemars(length(min = 1, max = 1000))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub services: Vec<Service>,

    /// How many services may be rebuilding at the same time, across the plan. Within a tier
    /// the services with the longest chain of dependants go first. Default: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_parallel: Option<u32>,

    /// What a failed service does to the rest of the plan. `HaltLowerTiers` (default) stops
    /// every later tier and the services that depend on it; `Continue` gives the service up,
    /// reports it, and goes on.
    #[serde(default)]
    pub on_failure: OnFailure,

    /// While true the operator starts nothing new; what is already running finishes.
    #[serde(default)]
    pub paused: bool,

    /// When the rebuild starts. `Apply` (default): as soon as the plan is applied, as in a
    /// clean cluster rebuilt from Git. `Incident`: only once a `Real` Incident naming this
    /// plan has locked access down, frozen pruning and chosen restore points; until then the
    /// plan is Pending and creates nothing.
    #[serde(default)]
    pub trigger: Trigger,
}

/// What starts a plan's rebuild.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Trigger {
    /// Applying the plan.
    #[default]
    Apply,
    /// A Real Incident that names the plan, once it reaches its Recover step.
    Incident,
}

/// A priority tier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tier {
    /// Name of the tier, unique within the plan, such as `life-critical`.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub name: String,
    /// What the tier holds and why it comes at this place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// Recovery time objective: how long after the start of the recovery every service of
    /// the tier must be ready, such as 15m, 4h or 72h.
    pub rto: Duration,
}

/// Whether a service is rebuilt or only verified.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceAction {
    /// Create the service's workload (and restore its data) in the cluster.
    #[default]
    Rebuild,
    /// Create nothing: run the readiness checks against what is already there (data that
    /// the incident did not touch, such as financial records, is verified, not rebuilt).
    Verify,
}

/// What the plan does when a service fails or times out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum OnFailure {
    /// Stop: no later tier starts, and neither does any service depending on the failed one.
    #[default]
    HaltLowerTiers,
    /// Give the failed service up and go on; services depending on it stay blocked.
    Continue,
}

/// A service of the plan: a set of Kubernetes objects in one namespace that becomes ready
/// as a whole.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.dependsOn) || !(self.name in self.dependsOn)")
    .message("a service cannot depend on itself")
    .field_path(".dependsOn"))]
#[x_kube(validation = Rule::new("self.action == 'Verify' ? !has(self.workload) : has(self.workload)")
    .message("a service with action Rebuild needs a workload; a service with action Verify must not have one")
    .field_path(".workload")
    .reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("self.action != 'Verify' || (has(self.readiness) && has(self.readiness.checks) && size(self.readiness.checks) > 0)")
    .message("a service with action Verify needs at least one check in readiness.checks: that is what verifies it")
    .field_path(".readiness")
    .reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("self.action != 'Verify' || !has(self.dataRestore)")
    .message("a service with action Verify restores no data")
    .field_path(".dataRestore"))]
pub struct Service {
    /// Name of the service, unique within the plan, such as `dispatch-118`.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub name: String,

    /// The tier the service belongs to: one of `spec.tiers[].name`.
    #[schemars(length(min = 1, max = 63))]
    pub tier: String,

    /// Namespace the service's objects live in. The operator creates it when missing,
    /// labelled for the Pod Security `restricted` level.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub namespace: String,

    /// Services (of the same or an earlier tier) that must be ready before this one starts.
    /// The generated NetworkPolicies let this service reach exactly these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "set"))]
    #[schemars(inner(length(min = 1, max = 63)))]
    pub depends_on: Vec<String>,

    /// `Rebuild` (default) creates the workload; `Verify` only runs the readiness checks.
    #[serde(default)]
    pub action: ServiceAction,

    /// What to create for the service: inline manifests, a ConfigMap or Secret that holds
    /// them, or the service's objects from a Backup. Exactly one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,

    /// A Job that restores the service's data before its workload is created. It must
    /// complete; it is given the chosen backup through its environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_restore: Option<JobTemplate>,

    /// Secrets to create with fresh random values instead of restoring them: credentials
    /// are changed after a compromise, never copied back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub regenerate_secrets: Vec<RegeneratedSecret>,

    /// When the service counts as ready. Default: every Deployment and StatefulSet it
    /// created is Available with all replicas updated, every Job it created is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Readiness>,

    /// How long the rebuild is expected to take, used to compute the critical path and to
    /// order services within a tier. Default: 1m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_duration: Option<Duration>,
}

/// Where a service's objects come from. Exactly one field is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.manifests), has(self.configMapRef), has(self.secretRef), has(self.fromBackup)].filter(x, x).size() == 1")
    .message("set exactly one of manifests, configMapRef, secretRef or fromBackup"))]
pub struct Workload {
    /// The objects themselves (Deployments, Services, ConfigMaps, ...), each a complete
    /// manifest. A namespace in their metadata is replaced by the service's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "embedded_objects_schema")]
    pub manifests: Option<Vec<serde_json::Value>>,

    /// A ConfigMap whose values are YAML manifests (one or several documents per key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ManifestSource>,

    /// A Secret whose values are YAML manifests, for workloads that carry credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<ManifestSource>,

    /// The service's objects as they were in a backup: the restore point chosen for the
    /// incident, or the backup named here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_backup: Option<FromBackup>,
}

/// A ConfigMap or Secret holding manifests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManifestSource {
    /// Name of the ConfigMap or Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace (it is read from a clean source, usually not the service's namespace).
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub namespace: String,
    /// Only these keys; all keys when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "set"))]
    pub keys: Vec<String>,
}

/// Take the service's objects from a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FromBackup {
    /// Restore from this Backup. When empty, from the restore point the running Incident
    /// chose: the newest clean backup of this namespace before the compromise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub backup: Option<String>,
    /// The namespace to take from the backup. Default: the service's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub source_namespace: Option<String>,
    /// Only objects of these kinds (such as Deployment, Service, ConfigMap). Default: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "set"))]
    pub kinds: Vec<String>,
    /// Secret holding the age private key (key `identity`) that decrypts the backup. It is
    /// supplied at recovery by whoever keeps the key offline; the operator never writes it
    /// anywhere and never logs it.
    pub identity_secret_ref: NamespacedRef,
}

/// A Secret created with fresh random values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegeneratedSecret {
    /// Name of the Secret, in the service's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The keys to fill, each with a new random value.
    #[schemars(length(min = 1, max = 32), extend("x-kubernetes-list-type" = "set"))]
    pub keys: Vec<String>,
    /// Length of each random value, in bytes before encoding. Default: 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 1024))]
    pub length: Option<u32>,
}

/// When a service counts as ready.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// Jobs that must succeed after the workload is available, such as a query that proves
    /// the data answers. They run in the service's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub checks: Vec<JobTemplate>,
    /// How long the service may take from its start to ready before it fails. Default: 30m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// The recovery as the operator sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryPlanStatus {
    /// Pending, Recovering, Recovered, Degraded (finished with services given up) or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PlanPhase>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (kstatus: the plan is fully recovered), Progressing and Stalled (the plan is
    /// invalid or a failure halted it; the message says what to fix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The tier being recovered now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_tier: Option<String>,
    /// Ready services out of all services, such as `7/12`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Number of services ready.
    #[serde(default)]
    pub ready_services: u32,
    /// Number of services in the plan.
    #[serde(default)]
    pub total_services: u32,
    /// `Met` when every finished tier was ready within its RTO, `Breached` otherwise,
    /// `Pending` while no tier has finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto: Option<RtoResult>,
    /// One entry per tier, in plan order.
    // Atomic: the operator alone writes the status, always whole. Tracked entry by entry,
    // the lists made the managed fields a third of a 1,000-service plan, and every status
    // write merged them field by field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub tiers: Vec<TierStatus>,
    /// One entry per service, in recovery order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub services: Vec<ServiceStatus>,
}

/// Phase of a whole plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PlanPhase {
    Pending,
    Recovering,
    Recovered,
    Degraded,
    Failed,
}

/// Whether a recovery time objective was met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RtoResult {
    Pending,
    Met,
    Breached,
}

/// Progress of one tier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TierStatus {
    /// Name of the tier.
    pub name: String,
    /// Pending, Recovering, Recovered, Degraded or Failed.
    pub phase: PlanPhase,
    /// When its first service started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Time>,
    /// When its last service became ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<Time>,
    /// The tier's RTO target, as written in the spec.
    pub rto_target: String,
    /// Whether the tier was ready within its RTO.
    pub rto: RtoResult,
}

/// Phase of one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServicePhase {
    Pending,
    Blocked,
    RestoringData,
    Deploying,
    Verifying,
    Ready,
    Failed,
}

/// Progress of one service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// Name of the service.
    pub name: String,
    /// Its tier.
    pub tier: String,
    /// Pending, Blocked, RestoringData, Deploying, Verifying, Ready or Failed.
    pub phase: ServicePhase,
    /// What the service waits for: services, or `tier/NAME` for an earlier tier.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_on: Vec<String>,
    /// What happened last, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the operator started rebuilding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Time>,
    /// When it became ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<Time>,
    /// How many times it was started (a rebuild after its objects disappeared counts).
    #[serde(default)]
    pub attempts: u32,
    /// The Secrets of `regenerateSecrets` as the operator last wrote them (uid and
    /// resourceVersion, never values): a Secret that no longer matches its entry is not the
    /// operator's and gets fresh values at the service's next start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub regenerated_secrets: Vec<WrittenSecret>,
}
