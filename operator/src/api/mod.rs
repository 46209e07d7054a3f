//! The six kinds of the `resurgo.dev/v1alpha1` API, as Rust types.
//!
//! The CRD YAML in `crds/` is generated from these types (`resurgo crd`), so every doc comment
//! here is what `kubectl explain` shows, and every `x_kube(validation)` is a CEL rule the API
//! server enforces before the operator ever sees an object.

pub mod access_policy;
pub mod backup;
pub mod backup_schedule;
pub mod backup_store;
pub mod common;
pub mod incident;
pub mod recovery_plan;

pub use access_policy::AccessPolicy;
pub use backup::Backup;
pub use backup_schedule::BackupSchedule;
pub use backup_store::BackupStore;
pub use incident::Incident;
pub use recovery_plan::RecoveryPlan;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every Resurgo kind.
pub const GROUP: &str = "resurgo.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";

/// Every CRD Resurgo defines, in a stable order (the order `resurgo crd` prints them).
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        RecoveryPlan::crd(),
        BackupStore::crd(),
        BackupSchedule::crd(),
        Backup::crd(),
        AccessPolicy::crd(),
        Incident::crd(),
    ]
}
