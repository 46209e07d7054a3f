//! What `resurgo status` shows of a plan, computed from the plan's status alone: the same
//! model feeds the terminal view and `-o json|yaml`, so both always say the same thing.

use std::time::Duration as StdDuration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use crate::{
    api::{
        incident::{
            ChosenRestorePoint, Incident, IncidentMode, IncidentPhase, IncidentState, StepState,
            TierResult,
        },
        recovery_plan::{PlanPhase, RecoveryPlan, RtoResult, ServicePhase},
    },
    labels,
};

/// An incident as the status view shows it: its timeline, the restore points it chose, the
/// tiers against their RTOs, and its plans (a drill's copies, while they exist).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IncidentView {
    pub name: String,
    pub mode: IncidentMode,
    pub state: IncidentState,
    /// `Pending` until the operator has written a status.
    pub phase: IncidentPhase,
    pub compromised_since: String,
    pub timeline: Vec<StepView>,
    pub restore_points: Vec<ChosenRestorePoint>,
    pub tiers: Vec<TierResult>,
    pub plans: Vec<PlanView>,
}

/// One step of an incident's timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    pub step: String,
    pub state: StepState,
    /// Seconds from its start until it finished (or until now).
    pub elapsed_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl IncidentView {
    /// The view of `incident` at `now`, with the plans it runs picked from `plans`: the
    /// named ones for a real incident, its copies for a drill.
    pub fn of(incident: &Incident, plans: &[RecoveryPlan], now: Timestamp) -> Self {
        let status = incident.status.clone().unwrap_or_default();
        let name = incident.name_any();
        let ours = |plan: &&RecoveryPlan| match incident.spec.mode {
            IncidentMode::Real => incident.spec.recovery_plans.contains(&plan.name_any()),
            IncidentMode::Drill => plan.labels().get(labels::INCIDENT) == Some(&name),
        };
        let mut plans: Vec<PlanView> = plans
            .iter()
            .filter(ours)
            .map(|plan| PlanView::of(plan, now))
            .collect();
        plans.sort_by(|a, b| a.name.cmp(&b.name));
        IncidentView {
            name,
            mode: incident.spec.mode,
            state: incident.spec.state,
            phase: status.phase.unwrap_or(IncidentPhase::Pending),
            compromised_since: incident.spec.compromised_since.0.to_string(),
            timeline: status
                .timeline
                .iter()
                .map(|entry| StepView {
                    step: entry.step.clone(),
                    state: entry.state,
                    elapsed_seconds: StdDuration::try_from(
                        entry
                            .finished
                            .as_ref()
                            .map_or(now, |t| t.0)
                            .duration_since(entry.started.0),
                    )
                    .unwrap_or_default()
                    .as_secs(),
                    message: entry.message.clone(),
                })
                .collect(),
            restore_points: status.restore_points,
            tiers: status.tiers,
            plans,
        }
    }
}

/// One plan as the status view shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanView {
    pub name: String,
    /// `Pending` until the operator has written a status.
    pub phase: PlanPhase,
    pub ready_services: u32,
    pub total_services: u32,
    pub rto: RtoResult,
    /// Seconds since the first service started, until the last became ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_seconds: Option<u64>,
    /// Why the plan stands still, from its `Stalled` condition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled: Option<String>,
    pub tiers: Vec<TierView>,
}

/// One tier: its services in recovery order and its time against its RTO.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TierView {
    pub name: String,
    pub phase: PlanPhase,
    pub ready_services: u32,
    pub total_services: u32,
    /// The RTO as written in the spec, such as `15m`.
    pub rto_target: String,
    pub rto: RtoResult,
    /// Seconds from the start of the recovery until the tier was ready (or until now).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_seconds: Option<u64>,
    pub services: Vec<ServiceView>,
}

/// One service.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub name: String,
    pub phase: ServicePhase,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blocked_on: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Seconds from its start until it was ready (or until now).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_seconds: Option<u64>,
}

impl PlanView {
    /// The view of `plan` at `now`. Tiers and services the operator has not reported yet
    /// (a plan it has not reconciled) show as Pending, in spec order.
    pub fn of(plan: &RecoveryPlan, now: Timestamp) -> Self {
        let status = plan.status.clone().unwrap_or_default();
        let start = status
            .services
            .iter()
            .filter_map(|s| s.started.as_ref().map(|t| t.0))
            .min();
        let seconds = |from: Option<Timestamp>, to: Option<Timestamp>| {
            from.map(|from| {
                let to = to.unwrap_or(now);
                StdDuration::try_from(to.duration_since(from))
                    .unwrap_or_default()
                    .as_secs()
            })
        };
        let tiers = plan
            .spec
            .tiers
            .iter()
            .map(|tier| {
                let reported = status.tiers.iter().find(|t| t.name == tier.name);
                // Services in recovery order when reported, then any the status lacks.
                let mut services: Vec<ServiceView> = status
                    .services
                    .iter()
                    .filter(|s| s.tier == tier.name)
                    .map(|s| ServiceView {
                        name: s.name.clone(),
                        phase: s.phase,
                        blocked_on: s.blocked_on.clone(),
                        message: s.message.clone(),
                        elapsed_seconds: seconds(
                            s.started.as_ref().map(|t| t.0),
                            s.ready.as_ref().map(|t| t.0),
                        ),
                    })
                    .collect();
                for spec in plan.spec.services.iter().filter(|s| s.tier == tier.name) {
                    if !services.iter().any(|s| s.name == spec.name) {
                        services.push(ServiceView {
                            name: spec.name.clone(),
                            phase: ServicePhase::Pending,
                            blocked_on: Vec::new(),
                            message: None,
                            elapsed_seconds: None,
                        });
                    }
                }
                let tier_start = reported.and_then(|t| t.started.as_ref()).map(|_| start);
                TierView {
                    name: tier.name.clone(),
                    phase: reported.map_or(PlanPhase::Pending, |t| t.phase),
                    ready_services: services
                        .iter()
                        .filter(|s| s.phase == ServicePhase::Ready)
                        .count() as u32,
                    total_services: services.len() as u32,
                    rto_target: tier.rto.to_string(),
                    rto: reported.map_or(RtoResult::Pending, |t| t.rto),
                    elapsed_seconds: seconds(
                        tier_start.flatten(),
                        reported.and_then(|t| t.ready.as_ref()).map(|t| t.0),
                    ),
                    services,
                }
            })
            .collect::<Vec<_>>();
        let finished = matches!(
            status.phase,
            Some(PlanPhase::Recovered | PlanPhase::Degraded | PlanPhase::Failed)
        );
        let end = if finished {
            status
                .services
                .iter()
                .filter_map(|s| s.ready.as_ref().map(|t| t.0))
                .max()
        } else {
            None
        };
        PlanView {
            name: plan.name_any(),
            phase: status.phase.unwrap_or(PlanPhase::Pending),
            ready_services: tiers.iter().map(|t| t.ready_services).sum(),
            total_services: tiers.iter().map(|t| t.total_services).sum(),
            rto: status.rto.unwrap_or(RtoResult::Pending),
            elapsed_seconds: seconds(start, end),
            stalled: status
                .conditions
                .iter()
                .find(|c| c.type_ == "Stalled" && c.status == "True")
                .map(|c| c.message.clone()),
            tiers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use crate::api::recovery_plan::{RecoveryPlanStatus, ServiceStatus, TierStatus};

    fn plan() -> RecoveryPlan {
        crate::yaml::from_str(
            r#"
apiVersion: resurgo.dev/v1alpha1
kind: RecoveryPlan
metadata: {name: lazio}
spec:
  tiers:
  - {name: life-critical, rto: 15m}
  - {name: booking, rto: 72h}
  services:
  - name: dispatch-118
    tier: life-critical
    namespace: emergency
    workload: {manifests: []}
  - name: cup
    tier: booking
    namespace: booking
    dependsOn: [dispatch-118]
    workload: {manifests: []}
"#,
        )
        .expect("a valid plan")
    }

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(1_700_000_000 + seconds).unwrap())
    }

    #[test]
    fn a_plan_without_status_lists_every_service_as_pending() {
        let view = PlanView::of(&plan(), at(0).0);
        assert_eq!(view.phase, PlanPhase::Pending);
        assert_eq!((view.ready_services, view.total_services), (0, 2));
        assert_eq!(view.tiers[0].services[0].name, "dispatch-118");
        assert_eq!(view.tiers[1].services[0].phase, ServicePhase::Pending);
        assert_eq!(view.tiers[0].rto_target, "15m");
        assert_eq!(view.elapsed_seconds, None);
    }

    #[test]
    fn times_count_from_the_first_start_and_stop_at_ready() {
        let mut plan = plan();
        plan.status = Some(RecoveryPlanStatus {
            phase: Some(PlanPhase::Recovering),
            tiers: vec![
                TierStatus {
                    name: "life-critical".into(),
                    phase: PlanPhase::Recovered,
                    started: Some(at(0)),
                    ready: Some(at(40)),
                    rto_target: "15m".into(),
                    rto: RtoResult::Met,
                },
                TierStatus {
                    name: "booking".into(),
                    phase: PlanPhase::Recovering,
                    started: Some(at(41)),
                    ready: None,
                    rto_target: "72h".into(),
                    rto: RtoResult::Pending,
                },
            ],
            services: vec![
                ServiceStatus {
                    name: "dispatch-118".into(),
                    tier: "life-critical".into(),
                    phase: ServicePhase::Ready,
                    blocked_on: vec![],
                    message: None,
                    started: Some(at(0)),
                    ready: Some(at(40)),
                    attempts: 1,
                    regenerated_secrets: vec![],
                },
                ServiceStatus {
                    name: "cup".into(),
                    tier: "booking".into(),
                    phase: ServicePhase::Deploying,
                    blocked_on: vec![],
                    message: Some("waiting for deployment/cup".into()),
                    started: Some(at(41)),
                    ready: None,
                    attempts: 1,
                    regenerated_secrets: vec![],
                },
            ],
            conditions: vec![Condition {
                type_: "Stalled".into(),
                status: "False".into(),
                reason: "Recovering".into(),
                message: String::new(),
                last_transition_time: at(0),
                observed_generation: None,
            }],
            ..Default::default()
        });
        let view = PlanView::of(&plan, at(100).0);
        assert_eq!(view.elapsed_seconds, Some(100));
        assert_eq!(view.tiers[0].elapsed_seconds, Some(40));
        // A tier's time counts from the start of the recovery: that is what its RTO measures.
        assert_eq!(view.tiers[1].elapsed_seconds, Some(100));
        assert_eq!(view.tiers[1].services[0].elapsed_seconds, Some(59));
        assert_eq!((view.ready_services, view.total_services), (1, 2));
        assert_eq!(view.stalled, None);
    }
}
