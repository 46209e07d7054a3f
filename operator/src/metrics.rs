//! The operator's Prometheus metrics, served on `/metrics` by [`crate::admin`].
//!
//! One [`Metrics`] is made by `resurgo run` and handed to every controller through
//! [`crate::operator::Shared`]. Only metrics that something updates are registered: a
//! controller that wants a new one adds a field here, registers it in [`Metrics::new`], and a
//! method that updates it, so names, help texts and labels stay in one place.
//!
//! | Metric | Labels | Updated by |
//! |---|---|---|
//! | `resurgo_reconciles_total` | `kind` | every controller, per reconcile ([`Metrics::reconciled`]) |
//! | `resurgo_reconcile_errors_total` | `kind` | every controller, per failed reconcile ([`Metrics::reconcile_failed`]) |
//! | `resurgo_recovery_tier_services` | `plan`, `tier` | the RecoveryPlan controller |
//! | `resurgo_recovery_tier_services_ready` | `plan`, `tier` | the RecoveryPlan controller |
//! | `resurgo_recovery_tier_rto_target_seconds` | `plan`, `tier` | the RecoveryPlan controller |
//! | `resurgo_recovery_tier_ready_seconds` | `plan`, `tier` | the RecoveryPlan controller: from the recovery's start to the tier being ready, what the RTO is measured against; absent until then |
//! | `resurgo_recovery_started_timestamp_seconds` | `plan` | the RecoveryPlan controller: when the plan's first service started |
//! | `resurgo_leader` | | leader election: 1 while this replica runs the controllers |

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::api::recovery_plan::{RecoveryPlan, RecoveryPlanStatus, ServicePhase};

/// The label of the per-kind reconcile counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The kind the controller reconciles, such as `RecoveryPlan`.
    pub kind: String,
}

/// The labels of a plan's per-tier series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    pub plan: String,
    pub tier: String,
}

/// The label of a plan's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlanLabels {
    pub plan: String,
}

type Seconds = Gauge<f64, AtomicU64>;

/// Every metric the operator exports, registered once.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabels, Counter>,
    reconcile_errors: Family<KindLabels, Counter>,
    tier_services: Family<TierLabels, Gauge>,
    tier_services_ready: Family<TierLabels, Gauge>,
    tier_rto_target_seconds: Family<TierLabels, Seconds>,
    tier_ready_seconds: Family<TierLabels, Seconds>,
    recovery_started: Family<PlanLabels, Seconds>,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::with_prefix("resurgo"),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            tier_services: Family::default(),
            tier_services_ready: Family::default(),
            tier_rto_target_seconds: Family::default(),
            tier_ready_seconds: Family::default(),
            recovery_started: Family::default(),
            leader: Gauge::default(),
        };
        let r = &mut metrics.registry;
        r.register(
            "reconciles",
            "Reconciles started, per kind",
            metrics.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconciles that failed and will be retried, per kind",
            metrics.reconcile_errors.clone(),
        );
        r.register(
            "recovery_tier_services",
            "Services in a tier of a RecoveryPlan",
            metrics.tier_services.clone(),
        );
        r.register(
            "recovery_tier_services_ready",
            "Services of a tier of a RecoveryPlan that are ready",
            metrics.tier_services_ready.clone(),
        );
        r.register(
            "recovery_tier_rto_target_seconds",
            "Recovery time objective of a tier: how long after the recovery's start every service of the tier must be ready",
            metrics.tier_rto_target_seconds.clone(),
        );
        r.register(
            "recovery_tier_ready_seconds",
            "Seconds from the recovery's start until the tier was ready (absent until it is)",
            metrics.tier_ready_seconds.clone(),
        );
        r.register(
            "recovery_started_timestamp_seconds",
            "Unix time at which the plan's first service started",
            metrics.recovery_started.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease and runs the controllers",
            metrics.leader.clone(),
        );
        metrics
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// A controller of `kind` starts a reconcile.
    pub fn reconciled(&self, kind: &str) {
        self.reconciles
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// A reconcile of `kind` failed and will be retried.
    pub fn reconcile_failed(&self, kind: &str) {
        self.reconcile_errors
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// Whether this replica is the leader.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The per-tier progress of a plan, from the status just computed for it.
    pub fn recovery_progress(&self, plan: &RecoveryPlan, status: &RecoveryPlanStatus) {
        let plan_name = kube::ResourceExt::name_any(plan);
        let started = status
            .services
            .iter()
            .filter_map(|s| s.started.as_ref())
            .map(|t| t.0)
            .min();
        let plan_labels = PlanLabels {
            plan: plan_name.clone(),
        };
        match started {
            Some(start) => {
                self.recovery_started
                    .get_or_create(&plan_labels)
                    .set(start.as_millisecond() as f64 / 1000.0);
            }
            None => {
                self.recovery_started.remove(&plan_labels);
            }
        }
        for tier in &plan.spec.tiers {
            let labels = TierLabels {
                plan: plan_name.clone(),
                tier: tier.name.clone(),
            };
            let members = status.services.iter().filter(|s| s.tier == tier.name);
            let (total, ready) = members.fold((0, 0), |(total, ready), s| {
                (total + 1, ready + i64::from(s.phase == ServicePhase::Ready))
            });
            self.tier_services.get_or_create(&labels).set(total);
            self.tier_services_ready.get_or_create(&labels).set(ready);
            if let Ok(rto) = tier.rto.to_std() {
                self.tier_rto_target_seconds
                    .get_or_create(&labels)
                    .set(rto.as_secs_f64());
            }
            let tier_ready = status
                .tiers
                .iter()
                .find(|t| t.name == tier.name)
                .and_then(|t| t.ready.as_ref());
            match (started, tier_ready) {
                (Some(start), Some(ready)) => {
                    let took = ready.0.as_millisecond() - start.as_millisecond();
                    self.tier_ready_seconds
                        .get_or_create(&labels)
                        .set(took as f64 / 1000.0);
                }
                _ => {
                    self.tier_ready_seconds.remove(&labels);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::recovery_plan::{ServiceStatus, TierStatus};
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

    fn plan() -> RecoveryPlan {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "resurgo.dev/v1alpha1", "kind": "RecoveryPlan",
            "metadata": {"name": "lazio"},
            "spec": {
                "tiers": [{"name": "life-critical", "rto": "15m"}, {"name": "clinical", "rto": "4h"}],
                "services": [
                    {"name": "dispatch", "tier": "life-critical", "namespace": "dispatch"},
                    {"name": "emergency", "tier": "life-critical", "namespace": "emergency"},
                    {"name": "records", "tier": "clinical", "namespace": "records"}
                ]
            }
        }))
        .unwrap()
    }

    fn service(name: &str, tier: &str, phase: ServicePhase, started: Option<i64>) -> ServiceStatus {
        serde_json::from_value(serde_json::json!({
            "name": name, "tier": tier, "phase": phase, "attempts": 1,
        }))
        .map(|mut s: ServiceStatus| {
            s.started = started.map(|t| Time(Timestamp::from_second(t).unwrap()));
            s
        })
        .unwrap()
    }

    #[test]
    fn tier_progress_and_time_to_ready_are_exported() {
        let metrics = Metrics::new();
        let mut status = RecoveryPlanStatus {
            services: vec![
                service("dispatch", "life-critical", ServicePhase::Ready, Some(1000)),
                service(
                    "emergency",
                    "life-critical",
                    ServicePhase::Ready,
                    Some(1010),
                ),
                service("records", "clinical", ServicePhase::Deploying, Some(1200)),
            ],
            ..Default::default()
        };
        let tier: TierStatus = serde_json::from_value(serde_json::json!({
            "name": "life-critical", "phase": "Recovered", "rtoTarget": "15m", "rto": "Met",
            "ready": "1970-01-01T00:21:30Z"
        }))
        .unwrap();
        status.tiers = vec![tier];
        metrics.recovery_progress(&plan(), &status);
        metrics.reconciled("RecoveryPlan");
        metrics.reconciled("RecoveryPlan");
        metrics.reconcile_failed("RecoveryPlan");
        let text = metrics.render();
        for line in [
            r#"resurgo_reconciles_total{kind="RecoveryPlan"} 2"#,
            r#"resurgo_reconcile_errors_total{kind="RecoveryPlan"} 1"#,
            r#"resurgo_recovery_tier_services{plan="lazio",tier="life-critical"} 2"#,
            r#"resurgo_recovery_tier_services_ready{plan="lazio",tier="life-critical"} 2"#,
            r#"resurgo_recovery_tier_services{plan="lazio",tier="clinical"} 1"#,
            r#"resurgo_recovery_tier_services_ready{plan="lazio",tier="clinical"} 0"#,
            r#"resurgo_recovery_tier_rto_target_seconds{plan="lazio",tier="clinical"} 14400.0"#,
            // 00:21:30 is 1290 s; the recovery started at 1000 s.
            r#"resurgo_recovery_tier_ready_seconds{plan="lazio",tier="life-critical"} 290.0"#,
            r#"resurgo_recovery_started_timestamp_seconds{plan="lazio"} 1000.0"#,
            "resurgo_leader 0",
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
        assert!(
            !text.contains(r#"resurgo_recovery_tier_ready_seconds{plan="lazio",tier="clinical"}"#),
            "a tier that is not ready has no ready time:\n{text}"
        );
    }
}
