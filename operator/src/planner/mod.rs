//! The recovery planner: from a RecoveryPlan's spec to the order in which its services are
//! rebuilt, the waves, the critical path, and, as the recovery goes on, which services may
//! start now. Plain data in, plain data out: no Kubernetes here, so that the controller and
//! `resurgo plan` make the same decisions and both are tested without a cluster.
//!
//! # The rules of the order
//!
//! A service may start once
//! 1. every service it depends on (`dependsOn`) is ready, and
//! 2. every service of every earlier tier is ready (the *tier barrier*).
//!
//! Among services free to start at the same moment (a wave, or [`NextSteps::start`]), the
//! one with the longest remaining chain goes first (see [`PlannedService::chain`]): when
//! `maxParallel` holds some back, those are the ones the tier can best wait for.
//!
//! # The schedule model (expected times and the critical path)
//!
//! The expected times assume that every service takes exactly its `expectedDuration`
//! (1m when absent, [`DEFAULT_EXPECTED_DURATION`]), starts the moment the rules above let it,
//! never fails, and that any number of services run at once (`maxParallel` is not modelled:
//! it can only make the recovery longer). Times count from the start of the recovery:
//!
//! - `starts_at(s) = max(ready_at(previous tier), max over d in dependsOn(s) of ready_at(d))`,
//!   with `ready_at(previous tier) = 0` for the first tier;
//! - `ready_at(s) = starts_at(s) + expectedDuration(s)`;
//! - `ready_at(tier) = max over its services of ready_at(s)`.
//!
//! The *critical path* is a chain of services, each starting exactly when the one before it
//! is ready, from a service starting at 0 to a service of the last tier that is ready last.
//! Each link is either a dependency or the tier barrier. Its length is `ready_at` of the last
//! tier: the expected duration of the whole recovery. Because of the barrier, a dependency on
//! an earlier tier is ready by the time its dependant's tier starts, so it never makes the
//! path longer (it is on the path only when it is also the last service of the tier before).
//! The length is therefore the sum, over the tiers, of each tier's longest chain of same-tier
//! dependencies. Ties are broken by recovery order, preferring a dependency link to a barrier
//! link.

mod error;
mod graph;
mod progress;
mod schedule;

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;

use std::time::Duration as StdDuration;

pub use error::PlanError;
pub use progress::{Blocked, Blocker, NextSteps, ServiceProgress};

use crate::api::recovery_plan::{OnFailure, RecoveryPlanSpec};

/// What a service without `expectedDuration` is assumed to take.
pub const DEFAULT_EXPECTED_DURATION: StdDuration = StdDuration::from_secs(60);

/// Plans a recovery: checks the plan and computes the order, the waves and the critical path.
///
/// Every problem of the plan is reported, not only the first one.
pub fn plan(spec: &RecoveryPlanSpec) -> Result<RecoveryOrder, Vec<PlanError>> {
    let graph = graph::build(spec)?;
    Ok(schedule::schedule(&graph, spec.on_failure))
}

/// The planned recovery of a valid plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryOrder {
    /// The tiers, in plan order (most urgent first).
    pub tiers: Vec<PlannedTier>,
    /// Every service, in recovery order: the waves one after the other.
    pub services: Vec<PlannedService>,
    /// Services that start together: a wave starts when the one before it is ready. Waves
    /// never mix tiers.
    pub waves: Vec<Wave>,
    /// The longest chain of expected durations through the recovery (see the module docs).
    pub critical_path: CriticalPath,
    /// What a failed service does to the rest of the plan.
    pub on_failure: OnFailure,
}

/// A tier of a valid plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedTier {
    pub name: String,
    /// How long after the start of the recovery every service of the tier must be ready.
    pub rto: StdDuration,
    /// Expected start, from the start of the recovery: when the previous tier is ready.
    pub starts_at: StdDuration,
    /// Expected time at which its last service is ready, from the start of the recovery.
    pub ready_at: StdDuration,
    /// Its services, in recovery order.
    pub services: Vec<String>,
}

impl PlannedTier {
    /// Whether the expected schedule has the tier ready within its RTO.
    pub fn meets_rto(&self) -> bool {
        self.ready_at <= self.rto
    }
}

/// A service of a valid plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedService {
    pub name: String,
    pub tier: String,
    /// The services it waits for, as written (without repeats).
    pub depends_on: Vec<String>,
    /// `expectedDuration`, or [`DEFAULT_EXPECTED_DURATION`].
    pub expected_duration: StdDuration,
    /// The longest chain of expected durations from the start of this service to the end of
    /// its tier's work: its own duration plus the longest chain of the same-tier services
    /// that depend on it. Services of later tiers do not count: they wait for the whole tier
    /// anyway. A longer chain starts first.
    pub chain: StdDuration,
    /// Expected start, from the start of the recovery.
    pub starts_at: StdDuration,
    /// Expected time at which it is ready, from the start of the recovery.
    pub ready_at: StdDuration,
    /// Index into [`RecoveryOrder::waves`].
    pub wave: usize,
}

/// Services that may all run at the same time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wave {
    pub tier: String,
    /// Longest chain first.
    pub services: Vec<String>,
}

/// The chain of services that decides how long the recovery takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CriticalPath {
    /// From the first service to start to the last one to be ready.
    pub services: Vec<String>,
    /// The sum of their expected durations: the expected duration of the whole recovery.
    pub length: StdDuration,
}

impl RecoveryOrder {
    /// The planned service of that name.
    pub fn service(&self, name: &str) -> Option<&PlannedService> {
        self.services.iter().find(|s| s.name == name)
    }
}
