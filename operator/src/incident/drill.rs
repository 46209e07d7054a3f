//! A drill's copy of a plan: the same services, tiers, dependencies and checks, rebuilt into
//! isolated copies of their namespaces (the drill's prefix before each name), so that a
//! drill measures the real recovery without touching a real namespace.
//!
//! The copy is an ordinary RecoveryPlan that the recovery controller rebuilds; its
//! namespaces get the same default-deny NetworkPolicies, with allow rules only between the
//! copies. Services that are verified in place (`action: Verify`) are left out: verifying
//! them means running checks in the real namespace, which a drill must not do.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::{
    api::{
        incident::{ChosenRestorePoint, Incident},
        recovery_plan::{RecoveryPlan, RecoveryPlanSpec, ServiceAction, Trigger},
    },
    labels,
};

/// Longest name a label value (and so a namespace copy or a plan name carried in the
/// `resurgo.dev/plan` label) may have.
const MAX_LABEL_VALUE: usize = 63;

/// Why a plan cannot be copied for a drill.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DrillError {
    #[error(
        "{what} {name:?} would be longer than {MAX_LABEL_VALUE} characters with the drill prefix {prefix:?}: choose a shorter drill.namespacePrefix"
    )]
    TooLong {
        what: &'static str,
        name: String,
        prefix: String,
    },
    #[error(
        "recoveryplan {plan}: nothing to drill, every service is verified in place (action: Verify)"
    )]
    Empty { plan: String },
}

/// The name of the drill's copy of `plan`.
pub fn copy_name(prefix: &str, plan: &str) -> String {
    format!("{prefix}{plan}")
}

/// The drill's copy of `plan` for `incident`: owned by the incident (deleting it deletes
/// the copy), labelled with it, and restoring each service from the restore point the
/// incident chose when the plan leaves the backup to the incident.
pub fn copy(
    plan: &RecoveryPlan,
    incident: &Incident,
    prefix: &str,
    restore_points: &[ChosenRestorePoint],
) -> Result<RecoveryPlan, DrillError> {
    let plan_name = plan.name_any();
    let name = copy_name(prefix, &plan_name);
    let too_long = |what, name: &str| DrillError::TooLong {
        what,
        name: name.to_owned(),
        prefix: prefix.to_owned(),
    };
    if name.len() > MAX_LABEL_VALUE {
        return Err(too_long("recoveryplan", &plan_name));
    }
    let verified_in_place: BTreeSet<&str> = plan
        .spec
        .services
        .iter()
        .filter(|s| s.action == ServiceAction::Verify)
        .map(|s| s.name.as_str())
        .collect();
    let mut services = Vec::new();
    for service in &plan.spec.services {
        if verified_in_place.contains(service.name.as_str()) {
            continue;
        }
        let mut copy = service.clone();
        copy.namespace = format!("{prefix}{}", service.namespace);
        if copy.namespace.len() > MAX_LABEL_VALUE {
            return Err(too_long("namespace", &service.namespace));
        }
        copy.depends_on
            .retain(|d| !verified_in_place.contains(d.as_str()));
        if let Some(from) = copy.workload.as_mut().and_then(|w| w.from_backup.as_mut()) {
            // The copy lives in another namespace: take the real one's objects.
            from.source_namespace
                .get_or_insert_with(|| service.namespace.clone());
            if from.backup.is_none() {
                from.backup = restore_points
                    .iter()
                    .find(|p| p.plan == plan_name && p.service == service.name)
                    .and_then(|p| p.backup.clone());
            }
        }
        services.push(copy);
    }
    if services.is_empty() {
        return Err(DrillError::Empty { plan: plan_name });
    }
    let tiers = plan
        .spec
        .tiers
        .iter()
        .filter(|t| services.iter().any(|s| s.tier == t.name))
        .cloned()
        .collect();
    let incident_name = incident.name_any();
    Ok(RecoveryPlan {
        metadata: ObjectMeta {
            name: Some(name),
            // The incident's own labels too: an operator started with `--selector` that
            // picked the incident must pick its copies.
            labels: Some(
                incident
                    .labels()
                    .clone()
                    .into_iter()
                    .chain([
                        (labels::INCIDENT.to_owned(), incident_name),
                        (labels::SOURCE_PLAN.to_owned(), plan_name),
                        (
                            labels::MANAGED_BY_KEY.to_owned(),
                            labels::MANAGED_BY.to_owned(),
                        ),
                    ])
                    .collect(),
            ),
            owner_references: incident.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: RecoveryPlanSpec {
            tiers,
            services,
            paused: false,
            trigger: Trigger::Apply,
            ..plan.spec.clone()
        },
        status: None,
    })
}

/// The services of `plan` a drill leaves out, and why, for the incident's timeline.
pub fn left_out(plan: &RecoveryPlan) -> Vec<String> {
    plan.spec
        .services
        .iter()
        .filter(|s| s.action == ServiceAction::Verify)
        .map(|s| s.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> RecoveryPlan {
        crate::yaml::from_str(
            r#"
apiVersion: resurgo.dev/v1alpha1
kind: RecoveryPlan
metadata: {name: lazio, uid: plan-uid}
spec:
  trigger: Incident
  tiers:
  - {name: clinical, rto: 4h}
  - {name: finance, rto: 24h}
  - {name: booking, rto: 72h}
  services:
  - name: records
    tier: clinical
    namespace: clinical-records
    workload: {fromBackup: {identitySecretRef: {name: lazio-age, namespace: resurgo-keys}}}
  - name: ledger
    tier: finance
    namespace: finance
    action: Verify
    readiness: {checks: [{name: balance, spec: {template: {spec: {containers: []}}}}]}
  - name: cup
    tier: booking
    namespace: cup
    dependsOn: [records, ledger]
    workload: {manifests: []}
"#,
        )
        .expect("a valid plan")
    }

    fn incident() -> Incident {
        crate::yaml::from_str(
            r#"
apiVersion: resurgo.dev/v1alpha1
kind: Incident
metadata: {name: drill-1, uid: incident-uid}
spec:
  compromisedSince: "2021-07-31T00:00:00Z"
  mode: Drill
  recoveryPlans: [lazio]
"#,
        )
        .expect("a valid incident")
    }

    fn chosen() -> Vec<ChosenRestorePoint> {
        vec![ChosenRestorePoint {
            plan: "lazio".into(),
            service: "records".into(),
            backup: Some("nightly-0730".into()),
            backup_completed: None,
            data_loss_window: None,
            message: None,
        }]
    }

    #[test]
    fn the_copy_lives_only_in_prefixed_namespaces() {
        let copy = copy(&plan(), &incident(), "drill-", &chosen()).unwrap();
        assert_eq!(copy.name_any(), "drill-lazio");
        let namespaces: Vec<&str> = copy
            .spec
            .services
            .iter()
            .map(|s| s.namespace.as_str())
            .collect();
        assert_eq!(namespaces, ["drill-clinical-records", "drill-cup"]);
        assert_eq!(copy.spec.trigger, Trigger::Apply);
        let owner = &copy.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Incident", "incident-uid")
        );
        assert_eq!(copy.labels()[labels::INCIDENT], "drill-1");
    }

    #[test]
    fn services_verified_in_place_are_left_out_with_their_tier_and_edges() {
        let copy = copy(&plan(), &incident(), "drill-", &chosen()).unwrap();
        assert!(copy.spec.services.iter().all(|s| s.name != "ledger"));
        assert!(copy.spec.tiers.iter().all(|t| t.name != "finance"));
        let cup = copy.spec.services.iter().find(|s| s.name == "cup").unwrap();
        assert_eq!(cup.depends_on, ["records"]);
        assert_eq!(left_out(&plan()), ["ledger"]);
        // What is left is still a plan the planner accepts.
        crate::planner::plan(&copy.spec).expect("a valid copy");
    }

    #[test]
    fn restores_come_from_the_real_namespace_at_the_chosen_restore_point() {
        let copy = copy(&plan(), &incident(), "drill-", &chosen()).unwrap();
        let from = copy.spec.services[0]
            .workload
            .as_ref()
            .unwrap()
            .from_backup
            .as_ref()
            .unwrap();
        assert_eq!(from.backup.as_deref(), Some("nightly-0730"));
        assert_eq!(from.source_namespace.as_deref(), Some("clinical-records"));
    }

    #[test]
    fn names_too_long_for_a_label_are_refused() {
        let mut plan = plan();
        plan.spec.services[0].namespace = "n".repeat(60);
        assert_eq!(
            copy(&plan, &incident(), "drill-", &[]).map(|c| c.name_any()),
            Err(DrillError::TooLong {
                what: "namespace",
                name: "n".repeat(60),
                prefix: "drill-".into()
            })
        );
    }
}
