//! The kinds of the `resurgo.dev/v1alpha1` API, as Rust types.
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
pub mod suspended_binding;

pub use access_policy::AccessPolicy;
pub use backup::Backup;
pub use backup_schedule::BackupSchedule;
pub use backup_store::BackupStore;
pub use incident::Incident;
pub use recovery_plan::RecoveryPlan;
pub use suspended_binding::SuspendedBinding;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every Resurgo kind.
pub const GROUP: &str = "resurgo.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";

/// Every CRD Resurgo defines, in a stable order (the order `resurgo crd` prints them).
pub fn crds() -> Vec<CustomResourceDefinition> {
    [
        RecoveryPlan::crd(),
        BackupStore::crd(),
        BackupSchedule::crd(),
        Backup::crd(),
        AccessPolicy::crd(),
        Incident::crd(),
        SuspendedBinding::crd(),
    ]
    .into_iter()
    .map(tidy_schema)
    .collect()
}

/// Two touches to the schema schemars generates:
/// - it names unsigned integers `uint16`/`uint32`/`uint64`, formats the API server does not
///   know (it warns on every apply); the `minimum: 0` it also emits keeps them unsigned, and
///   the format becomes the Kubernetes one wide enough for the values;
/// - descriptions keep the line breaks of the doc comments, which `kubectl explain` would
///   print mid-sentence; paragraphs are joined into single lines.
fn tidy_schema(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(format) = map.get_mut("format") {
                    match format.as_str() {
                        Some("uint16") => *format = "int32".into(),
                        Some("uint32" | "uint64") => *format = "int64".into(),
                        _ => {}
                    }
                }
                if let Some(serde_json::Value::String(text)) = map.get_mut("description") {
                    *text = text
                        .split("\n\n")
                        .map(|paragraph| {
                            paragraph
                                .split('\n')
                                .map(str::trim)
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .collect::<Vec<_>>()
                        .join("\n\n");
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(crd).expect("a CRD serialises to JSON");
    walk(&mut value);
    serde_json::from_value(value).expect("a CRD with changed formats is still a CRD")
}
