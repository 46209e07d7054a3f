//! The status a reconcile writes, computed from the plan, the planned order and where each
//! service stands: per tier, per service, the counts, the RTO verdict and the kstatus
//! conditions (`Ready`, `Progressing`, `Stalled`) that `kubectl wait` and Flux read.

use std::{collections::BTreeMap, time::Duration as StdDuration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use crate::{
    api::recovery_plan::{
        OnFailure, PlanPhase, RecoveryPlan, RecoveryPlanStatus, RtoResult, ServicePhase,
        ServiceStatus, TierStatus,
    },
    conditions::conditions,
    planner::{PlanError, RecoveryOrder},
};

/// The status of a plan the planner refused: nothing is created, `Stalled` says why.
pub fn invalid(
    plan: &RecoveryPlan,
    previous: &RecoveryPlanStatus,
    errors: &[PlanError],
    now: Timestamp,
) -> RecoveryPlanStatus {
    let generation = plan.metadata.generation;
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    RecoveryPlanStatus {
        phase: Some(PlanPhase::Failed),
        observed_generation: generation,
        conditions: conditions(
            &previous.conditions,
            generation,
            now,
            [
                (
                    "Ready",
                    false,
                    "InvalidPlan",
                    "the plan is invalid: nothing was created",
                ),
                (
                    "Progressing",
                    false,
                    "InvalidPlan",
                    "the plan is invalid: nothing was created",
                ),
                ("Stalled", true, "InvalidPlan", &message),
            ],
        ),
        total_services: plan.spec.services.len() as u32,
        ready: Some(format!("0/{}", plan.spec.services.len())),
        ..Default::default()
    }
}

/// Why a valid plan starts nothing new.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// `paused: true`.
    Paused,
    /// `trigger: Incident` and no incident has reached its Recover step.
    WaitingForIncident,
}

impl Hold {
    /// What the status says about it.
    pub fn message(self) -> &'static str {
        match self {
            Hold::Paused => "paused: nothing new starts",
            Hold::WaitingForIncident => {
                "waits for a Real Incident naming this plan to reach its Recover step (trigger: Incident)"
            }
        }
    }
}

/// The status of a valid plan.
pub fn compute(
    plan: &RecoveryPlan,
    order: &RecoveryOrder,
    services: &BTreeMap<String, ServiceStatus>,
    previous: &RecoveryPlanStatus,
    hold: Option<Hold>,
    now: Timestamp,
) -> RecoveryPlanStatus {
    let halt = order.on_failure == OnFailure::HaltLowerTiers;
    // The recovery starts when its first service does; RTOs count from there.
    let recovery_start = services
        .values()
        .filter_map(|s| s.started.as_ref())
        .map(|t| t.0)
        .min();

    let tiers: Vec<TierStatus> = order
        .tiers
        .iter()
        .map(|tier| {
            let members: Vec<&ServiceStatus> = tier
                .services
                .iter()
                .filter_map(|name| services.get(name))
                .collect();
            let all_ready = members.iter().all(|s| s.phase == ServicePhase::Ready);
            let any_failed = members.iter().any(|s| s.phase == ServicePhase::Failed);
            let finished = members.iter().all(|s| {
                matches!(
                    s.phase,
                    ServicePhase::Ready | ServicePhase::Failed | ServicePhase::Blocked
                )
            });
            let started = members
                .iter()
                .filter_map(|s| s.started.as_ref())
                .map(|t| t.0)
                .min();
            let phase = if all_ready {
                PlanPhase::Recovered
            } else if any_failed && halt {
                PlanPhase::Failed
            } else if finished {
                PlanPhase::Degraded
            } else if started.is_some() {
                PlanPhase::Recovering
            } else {
                PlanPhase::Pending
            };
            let ready = all_ready
                .then(|| {
                    members
                        .iter()
                        .filter_map(|s| s.ready.as_ref())
                        .map(|t| t.0)
                        .max()
                })
                .flatten();
            let rto_target = plan
                .spec
                .tiers
                .iter()
                .find(|t| t.name == tier.name)
                .map(|t| t.rto.0.clone())
                .unwrap_or_default();
            TierStatus {
                name: tier.name.clone(),
                phase,
                started: started.map(Time),
                ready: ready.map(Time),
                rto_target,
                rto: rto_verdict(tier.rto, recovery_start, ready, now),
            }
        })
        .collect();

    let total = plan.spec.services.len() as u32;
    let ready_count = services
        .values()
        .filter(|s| s.phase == ServicePhase::Ready)
        .count() as u32;
    let failed: Vec<&str> = services
        .values()
        .filter(|s| s.phase == ServicePhase::Failed)
        .map(|s| s.name.as_str())
        .collect();
    let phase = if ready_count == total {
        PlanPhase::Recovered
    } else if !failed.is_empty() && halt {
        PlanPhase::Failed
    } else if tiers
        .iter()
        .all(|t| matches!(t.phase, PlanPhase::Recovered | PlanPhase::Degraded))
    {
        PlanPhase::Degraded
    } else if recovery_start.is_some() {
        PlanPhase::Recovering
    } else {
        PlanPhase::Pending
    };
    let rto = if tiers.iter().any(|t| t.rto == RtoResult::Breached) {
        RtoResult::Breached
    } else if tiers.iter().all(|t| t.rto == RtoResult::Met) {
        RtoResult::Met
    } else {
        RtoResult::Pending
    };

    let ready_text = format!("{ready_count}/{total}");
    let failures = || {
        failed
            .iter()
            .map(|name| {
                let why = services[*name].message.clone().unwrap_or_default();
                format!("{name}: {why}")
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let (ready, progressing, stalled) = match phase {
        PlanPhase::Recovered => (
            (true, "Recovered", format!("all {total} services are ready")),
            (
                false,
                "Recovered",
                format!("all {total} services are ready"),
            ),
            (false, "Recovered", String::new()),
        ),
        PlanPhase::Failed => (
            (
                false,
                "ServiceFailed",
                format!("{ready_text} ready; halted by a failure"),
            ),
            (
                false,
                "ServiceFailed",
                "later tiers are halted (onFailure: HaltLowerTiers)".into(),
            ),
            (true, "ServiceFailed", failures()),
        ),
        PlanPhase::Degraded => (
            (
                false,
                "Degraded",
                format!("{ready_text} ready; the others were given up"),
            ),
            (
                false,
                "Degraded",
                "finished with services given up (onFailure: Continue)".into(),
            ),
            (true, "ServiceFailed", failures()),
        ),
        PlanPhase::Recovering | PlanPhase::Pending => {
            let current = tiers
                .iter()
                .find(|t| t.phase != PlanPhase::Recovered)
                .map(|t| t.name.as_str());
            let text = match hold {
                Some(hold) => format!("{ready_text} ready; {}", hold.message()),
                None => format!(
                    "{ready_text} ready; recovering tier {}",
                    current.unwrap_or("-")
                ),
            };
            let (why, progressing) = match hold {
                Some(Hold::Paused) => ("Paused", true),
                // Nothing moves until an incident says so: not progressing, not stalled.
                Some(Hold::WaitingForIncident) => ("WaitingForIncident", false),
                None => ("Recovering", true),
            };
            (
                (false, why, text.clone()),
                (progressing, why, text),
                (false, why, String::new()),
            )
        }
    };
    let generation = plan.metadata.generation;
    RecoveryPlanStatus {
        phase: Some(phase),
        observed_generation: generation,
        conditions: conditions(
            &previous.conditions,
            generation,
            now,
            [
                ("Ready", ready.0, ready.1, &ready.2),
                ("Progressing", progressing.0, progressing.1, &progressing.2),
                ("Stalled", stalled.0, stalled.1, &stalled.2),
            ],
        ),
        current_tier: tiers
            .iter()
            .find(|t| t.phase != PlanPhase::Recovered)
            .map(|t| t.name.clone()),
        ready: Some(ready_text),
        ready_services: ready_count,
        total_services: total,
        rto: Some(rto),
        tiers,
        services: order
            .services
            .iter()
            .filter_map(|planned| services.get(&planned.name).cloned())
            .collect(),
    }
}

fn rto_verdict(
    rto: StdDuration,
    start: Option<Timestamp>,
    ready: Option<Timestamp>,
    now: Timestamp,
) -> RtoResult {
    let Some(start) = start else {
        return RtoResult::Pending;
    };
    let took =
        |end: Timestamp| StdDuration::try_from(end.duration_since(start)).unwrap_or_default();
    match ready {
        Some(ready) if took(ready) <= rto => RtoResult::Met,
        Some(_) => RtoResult::Breached,
        None if took(now) > rto => RtoResult::Breached,
        None => RtoResult::Pending,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::planner;

    fn plan(on_failure: &str) -> RecoveryPlan {
        serde_json::from_value(json!({
            "apiVersion": "resurgo.dev/v1alpha1", "kind": "RecoveryPlan",
            "metadata": {"name": "p", "generation": 3},
            "spec": {
                "onFailure": on_failure,
                "tiers": [{"name": "first", "rto": "15m"}, {"name": "second", "rto": "4h"}],
                "services": [
                    {"name": "a", "tier": "first", "namespace": "a", "workload": {"manifests": []}},
                    {"name": "b", "tier": "second", "namespace": "b", "workload": {"manifests": []}}
                ]
            }
        }))
        .unwrap()
    }

    fn record(
        name: &str,
        tier: &str,
        phase: ServicePhase,
        started: Option<i64>,
        ready: Option<i64>,
    ) -> (String, ServiceStatus) {
        let at = |s: i64| Time(Timestamp::from_second(1_700_000_000 + s).unwrap());
        (
            name.into(),
            ServiceStatus {
                name: name.into(),
                tier: tier.into(),
                phase,
                blocked_on: vec![],
                message: Some("m".into()),
                started: started.map(at),
                ready: ready.map(at),
                attempts: u32::from(started.is_some()),
                regenerated_secrets: vec![],
            },
        )
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn condition<'a>(
        status: &'a RecoveryPlanStatus,
        type_: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_fully_ready_plan_is_recovered_and_ready() {
        let p = plan("HaltLowerTiers");
        let order = planner::plan(&p.spec).unwrap();
        let services = BTreeMap::from([
            record("a", "first", ServicePhase::Ready, Some(0), Some(60)),
            record("b", "second", ServicePhase::Ready, Some(60), Some(120)),
        ]);
        let status = compute(
            &p,
            &order,
            &services,
            &RecoveryPlanStatus::default(),
            None,
            at(130),
        );
        assert_eq!(status.phase, Some(PlanPhase::Recovered));
        assert_eq!(status.ready.as_deref(), Some("2/2"));
        assert_eq!(status.rto, Some(RtoResult::Met));
        assert_eq!(condition(&status, "Ready").status, "True");
        assert_eq!(condition(&status, "Ready").observed_generation, Some(3));
        assert_eq!(condition(&status, "Stalled").status, "False");
        assert_eq!(status.observed_generation, Some(3));
    }

    #[test]
    fn a_tier_ready_after_its_rto_breaches_it() {
        let p = plan("HaltLowerTiers");
        let order = planner::plan(&p.spec).unwrap();
        let services = BTreeMap::from([
            record("a", "first", ServicePhase::Ready, Some(0), Some(16 * 60)),
            record("b", "second", ServicePhase::Deploying, Some(16 * 60), None),
        ]);
        let status = compute(
            &p,
            &order,
            &services,
            &RecoveryPlanStatus::default(),
            None,
            at(17 * 60),
        );
        assert_eq!(status.tiers[0].rto, RtoResult::Breached);
        assert_eq!(status.tiers[1].rto, RtoResult::Pending);
        assert_eq!(status.rto, Some(RtoResult::Breached));
        assert_eq!(status.current_tier.as_deref(), Some("second"));
        assert_eq!(condition(&status, "Progressing").status, "True");
    }

    #[test]
    fn a_failure_halts_the_plan_or_degrades_it() {
        let services = BTreeMap::from([
            record("a", "first", ServicePhase::Failed, Some(0), None),
            record("b", "second", ServicePhase::Pending, None, None),
        ]);
        let p = plan("HaltLowerTiers");
        let status = compute(
            &p,
            &planner::plan(&p.spec).unwrap(),
            &services,
            &RecoveryPlanStatus::default(),
            None,
            at(10),
        );
        assert_eq!(status.phase, Some(PlanPhase::Failed));
        assert_eq!(condition(&status, "Stalled").status, "True");
        assert!(condition(&status, "Stalled").message.contains("a: m"));

        let services = BTreeMap::from([
            record("a", "first", ServicePhase::Failed, Some(0), None),
            record("b", "second", ServicePhase::Ready, Some(5), Some(9)),
        ]);
        let p = plan("Continue");
        let status = compute(
            &p,
            &planner::plan(&p.spec).unwrap(),
            &services,
            &RecoveryPlanStatus::default(),
            None,
            at(10),
        );
        assert_eq!(status.phase, Some(PlanPhase::Degraded));
    }

    #[test]
    fn an_unchanged_condition_keeps_its_transition_time() {
        let p = plan("HaltLowerTiers");
        let order = planner::plan(&p.spec).unwrap();
        let services = BTreeMap::from([
            record("a", "first", ServicePhase::Deploying, Some(0), None),
            record("b", "second", ServicePhase::Pending, None, None),
        ]);
        let first = compute(
            &p,
            &order,
            &services,
            &RecoveryPlanStatus::default(),
            None,
            at(1),
        );
        let second = compute(&p, &order, &services, &first, None, at(50));
        assert_eq!(first, second, "nothing changed, so nothing is rewritten");
    }
}
