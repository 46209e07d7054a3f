//! BackupStore: where backups live, and whether an attacker with the operator's
//! credentials could destroy them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::DNS_LABEL;

/// A place to keep backups: a filesystem path or an S3-compatible bucket. The operator
/// probes it when it starts and whenever the spec changes, and reports whether it is
/// reachable, whether object lock (WORM) protects what is written, and whether its own
/// credentials could delete or overwrite a backup (they should not).
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "resurgo.dev",
    version = "v1alpha1",
    kind = "BackupStore",
    doc = "Where backups are kept (a filesystem path or an S3 bucket), and whether they are safe there: reachable, locked against deletion, out of reach of the operator's own credentials.",
    plural = "backupstores",
    shortname = "bstore",
    category = "resurgo",
    status = "BackupStoreStatus",
    printcolumn(
        name = "Type",
        type_ = "string",
        json_path = ".status.type",
        description = "Filesystem or S3"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "WORM",
        type_ = "string",
        json_path = ".status.objectLock.mode",
        description = "Object lock mode, when on"
    ),
    printcolumn(
        name = "Can-Delete",
        type_ = "boolean",
        json_path = ".status.credentialsCanDelete",
        description = "Whether the operator's credentials can delete backups"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.filesystem) != has(self.s3)")
    .message("set exactly one of filesystem or s3"))]
pub struct BackupStoreSpec {
    /// A directory on a volume mounted into the operator's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemStore>,
    /// An S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Store>,
}

/// A directory on a mounted volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemStore {
    /// Absolute path of the directory, such as /var/lib/resurgo/backups.
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("must be an absolute path"))]
    pub path: String,
}

/// An S3-compatible bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.endpoint) || !self.endpoint.startsWith('http://') || self.allowInsecureHttp")
    .message("the endpoint uses plain http: backups and credentials would cross the network unencrypted; use https, or set allowInsecureHttp for a loopback test store")
    .field_path(".endpoint"))]
pub struct S3Store {
    /// Bucket name.
    #[schemars(
        length(min = 3, max = 63),
        regex(pattern = "^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
    )]
    pub bucket: String,
    /// Key prefix under which backups are written, such as `lazio/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub prefix: Option<String>,
    /// Region of the bucket. Default: us-east-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub region: Option<String>,
    /// Endpoint URL of an S3-compatible service (MinIO, Ceph, ...). Default: AWS S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && (self.startsWith('https://') || self.startsWith('http://'))")
        .message("must be an http or https URL such as https://s3.example.org"))]
    pub endpoint: Option<String>,
    /// Address buckets by path (`endpoint/bucket/key`) rather than by virtual host; most
    /// self-hosted S3 services need this.
    #[serde(default)]
    pub force_path_style: bool,
    /// Allow an `http://` endpoint. Only for test stores on loopback.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Secret with the keys `accessKeyId` and `secretAccessKey`, and `sessionToken` for
    /// temporary (STS) credentials. Give the operator credentials that can write but not
    /// delete: the status says whether they can. Wrong or expired credentials make the store
    /// unreachable, with the S3 error code (such as `SignatureDoesNotMatch`) as the reason.
    pub credentials_secret_ref: SecretRef,
}

/// A Secret in a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub namespace: String,
}

/// What the last probe of the store found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStoreStatus {
    /// The generation of the spec the last probe used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Filesystem` or `S3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "type")]
    pub store_type: Option<StoreType>,
    /// Ready (reachable and safe enough for the schedules that use it), Reachable,
    /// Immutable (object lock on), and DeleteProtected (the operator cannot delete backups).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Object lock as the store reports it; absent when off or unsupported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<ObjectLock>,
    /// Whether the operator's credentials could delete or overwrite a backup, as the last
    /// probe found by trying on a probe object. Absent when not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_can_delete: Option<bool>,
    /// When the store was last probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probed: Option<Time>,
}

/// Kind of store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StoreType {
    Filesystem,
    S3,
}

/// Object lock (write once, read many) settings of a bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectLock {
    /// `Governance` (privileged users can lift it) or `Compliance` (nobody can).
    pub mode: ObjectLockMode,
    /// The bucket's default retention period in days, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_retention_days: Option<u32>,
}

/// S3 object lock mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ObjectLockMode {
    Governance,
    Compliance,
}
