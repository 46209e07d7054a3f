//! Which services may start now and what every other one waits for: the decision the
//! controller takes again on every change it watches, from nothing but the plan and where
//! each service stands.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use super::{PlannedService, RecoveryOrder};
use crate::api::recovery_plan::OnFailure;

/// Where a service stands. A service the controller has not started yet has no entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceProgress {
    /// Started and not yet ready (restoring data, deploying or verifying).
    Started,
    Ready,
    /// Failed or timed out, and not being retried.
    Failed,
}

/// What the controller may do now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NextSteps {
    /// Services that may start now, longest chain first: when `maxParallel` leaves room for
    /// only some, take them from the front.
    pub start: Vec<String>,
    /// Services not started that may not start yet, in recovery order.
    pub blocked: Vec<Blocked>,
}

/// A service that may not start yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub service: String,
    /// Its dependencies that are not ready, then every earlier tier not finished.
    pub on: Vec<Blocker>,
    /// True when, as things stand, it can never start: a dependency failed (or is itself
    /// behind a failure), or, with `onFailure: HaltLowerTiers`, an earlier tier will never
    /// finish because of a failure. With `onFailure: Continue` such a service is given up and
    /// does not hold its tier back.
    pub behind_failure: bool,
}

/// One thing a blocked service waits for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Blocker {
    /// A dependency that is not ready.
    Service(String),
    /// An earlier tier that has not finished.
    Tier(String),
}

/// As in `status.services[].blockedOn`: a service name, or `tier/NAME`.
impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service(name) => f.write_str(name),
            Self::Tier(name) => write!(f, "tier/{name}"),
        }
    }
}

impl RecoveryOrder {
    /// Which services may start now, given where each service stands (names missing from
    /// `progress` have not started; names that are not in the plan are ignored).
    ///
    /// A tier is finished when all its services are ready; with `onFailure: Continue`, also
    /// when the others failed or are given up behind a failure.
    pub fn next_steps(&self, progress: &BTreeMap<String, ServiceProgress>) -> NextSteps {
        let halt = self.on_failure == OnFailure::HaltLowerTiers;
        let state = |name: &str| progress.get(name).copied();
        let planned: BTreeMap<&str, &PlannedService> =
            self.services.iter().map(|s| (s.name.as_str(), s)).collect();

        let mut steps = NextSteps::default();
        let mut given_up: BTreeSet<&str> = BTreeSet::new();
        let mut unfinished_tiers: Vec<&str> = Vec::new();
        let mut earlier_tier_doomed = false;

        for tier in &self.tiers {
            let mut finished = true;
            let mut doomed = false;
            for name in &tier.services {
                match state(name) {
                    Some(ServiceProgress::Ready) => continue,
                    Some(ServiceProgress::Failed) => {
                        finished &= !halt;
                        doomed |= halt;
                        continue;
                    }
                    Some(ServiceProgress::Started) => {
                        finished = false;
                        continue;
                    }
                    None => {}
                }
                let Some(service) = planned.get(name.as_str()) else {
                    continue;
                };
                let mut on: Vec<Blocker> = service
                    .depends_on
                    .iter()
                    .filter(|d| state(d) != Some(ServiceProgress::Ready))
                    .map(|d| Blocker::Service(d.clone()))
                    .collect();
                on.extend(
                    unfinished_tiers
                        .iter()
                        .map(|t| Blocker::Tier((*t).to_owned())),
                );
                if on.is_empty() {
                    steps.start.push(name.clone());
                    finished = false;
                    continue;
                }
                let behind_failure = earlier_tier_doomed
                    || service.depends_on.iter().any(|d| {
                        state(d) == Some(ServiceProgress::Failed) || given_up.contains(d.as_str())
                    });
                if behind_failure {
                    given_up.insert(name);
                }
                finished &= behind_failure && !halt;
                doomed |= behind_failure && halt;
                steps.blocked.push(Blocked {
                    service: name.clone(),
                    on,
                    behind_failure,
                });
            }
            if !finished {
                unfinished_tiers.push(&tier.name);
            }
            earlier_tier_doomed |= doomed;
        }

        // Stable: equal chains keep the recovery order.
        steps
            .start
            .sort_by_key(|name| Reverse(planned.get(name.as_str()).map(|s| s.chain)));
        steps
    }
}
