//! From a sound graph to the recovery order, the waves, the expected times and the critical
//! path, following the model in the module docs of [`super`].

use std::{cmp::Reverse, collections::VecDeque, time::Duration as StdDuration};

use super::{
    CriticalPath, PlannedService, PlannedTier, RecoveryOrder, Wave,
    graph::{Graph, ServiceNode},
};
use crate::api::recovery_plan::OnFailure;

pub(super) fn schedule(graph: &Graph, on_failure: OnFailure) -> RecoveryOrder {
    let services = &graph.services;
    let topological = topological_order(services);
    let chain = chains(services, &topological);
    let level = levels(services, &topological);

    let mut starts_at = vec![StdDuration::ZERO; services.len()];
    let mut ready_at = vec![StdDuration::ZERO; services.len()];
    let mut tiers = Vec::with_capacity(graph.tiers.len());
    let mut waves = Vec::new();
    let mut wave_of = vec![0usize; services.len()];
    let mut tier_start = StdDuration::ZERO;
    for (tier, node) in graph.tiers.iter().enumerate() {
        let members: Vec<usize> = topological
            .iter()
            .copied()
            .filter(|&s| services[s].tier == tier)
            .collect();
        let mut tier_ready = tier_start;
        for &at in &members {
            let dependencies_ready = services[at].depends_on.iter().map(|&d| ready_at[d]).max();
            starts_at[at] = tier_start.max(dependencies_ready.unwrap_or_default());
            ready_at[at] = starts_at[at].saturating_add(services[at].expected_duration);
            tier_ready = tier_ready.max(ready_at[at]);
        }

        let deepest = members.iter().map(|&s| level[s]).max().unwrap_or(0);
        let mut tier_services = Vec::with_capacity(members.len());
        for depth in 0..=deepest {
            let mut wave: Vec<usize> = members
                .iter()
                .copied()
                .filter(|&s| level[s] == depth)
                .collect();
            wave.sort_by_key(|&s| (Reverse(chain[s]), s));
            for &s in &wave {
                wave_of[s] = waves.len();
            }
            tier_services.extend(wave.iter().copied());
            waves.push(Wave {
                tier: node.name.clone(),
                services: wave.iter().map(|&s| services[s].name.clone()).collect(),
            });
        }
        tiers.push((tier_services, tier_start, tier_ready));
        tier_start = tier_ready;
    }

    let order: Vec<usize> = tiers
        .iter()
        .flat_map(|(s, _, _)| s.iter().copied())
        .collect();
    let critical_path = critical_path(graph, &order, &starts_at, &ready_at, tier_start);

    RecoveryOrder {
        tiers: graph
            .tiers
            .iter()
            .zip(&tiers)
            .map(|(node, (members, starts, ready))| PlannedTier {
                name: node.name.clone(),
                rto: node.rto,
                starts_at: *starts,
                ready_at: *ready,
                services: members.iter().map(|&s| services[s].name.clone()).collect(),
            })
            .collect(),
        services: order
            .iter()
            .map(|&s| PlannedService {
                name: services[s].name.clone(),
                tier: graph.tiers[services[s].tier].name.clone(),
                depends_on: services[s]
                    .depends_on
                    .iter()
                    .map(|&d| services[d].name.clone())
                    .collect(),
                expected_duration: services[s].expected_duration,
                chain: chain[s],
                starts_at: starts_at[s],
                ready_at: ready_at[s],
                wave: wave_of[s],
            })
            .collect(),
        waves,
        critical_path,
        on_failure,
    }
}

/// [`PlannedService::chain`] of every service: its duration plus the longest chain of the
/// same-tier services that depend on it, computed from the last dependants back.
fn chains(services: &[ServiceNode], topological: &[usize]) -> Vec<StdDuration> {
    let mut dependants = vec![Vec::new(); services.len()];
    for (at, service) in services.iter().enumerate() {
        for &dependency in &service.depends_on {
            if services[dependency].tier == service.tier {
                dependants[dependency].push(at);
            }
        }
    }
    let mut chain = vec![StdDuration::ZERO; services.len()];
    for &at in topological.iter().rev() {
        let longest_after = dependants[at].iter().map(|&d| chain[d]).max();
        chain[at] = services[at]
            .expected_duration
            .saturating_add(longest_after.unwrap_or_default());
    }
    chain
}

/// The wave of each service within its tier, counted from 0: one after its latest same-tier
/// dependency. Earlier tiers need no wave of their own here: the barrier orders them.
fn levels(services: &[ServiceNode], topological: &[usize]) -> Vec<usize> {
    let mut level = vec![0usize; services.len()];
    for &at in topological {
        level[at] = services[at]
            .depends_on
            .iter()
            .filter(|&&d| services[d].tier == services[at].tier)
            .map(|&d| level[d] + 1)
            .max()
            .unwrap_or(0);
    }
    level
}

/// Dependencies before dependants; among services free to go, plan order. The graph has no
/// cycle, so every service is placed.
fn topological_order(services: &[ServiceNode]) -> Vec<usize> {
    let mut waiting_on: Vec<usize> = services.iter().map(|s| s.depends_on.len()).collect();
    let mut dependants = vec![Vec::new(); services.len()];
    for (at, service) in services.iter().enumerate() {
        for &dependency in &service.depends_on {
            dependants[dependency].push(at);
        }
    }
    let mut free: VecDeque<usize> = (0..services.len())
        .filter(|&s| waiting_on[s] == 0)
        .collect();
    let mut order = Vec::with_capacity(services.len());
    while let Some(at) = free.pop_front() {
        order.push(at);
        for &dependant in &dependants[at] {
            waiting_on[dependant] -= 1;
            if waiting_on[dependant] == 0 {
                free.push_back(dependant);
            }
        }
    }
    order
}

/// Walks back from the service of the last tier that is ready last, each time to the
/// service whose readiness let it start: a dependency if one is ready exactly then,
/// otherwise a last service of the tier before (the barrier).
fn critical_path(
    graph: &Graph,
    order: &[usize],
    starts_at: &[StdDuration],
    ready_at: &[StdDuration],
    length: StdDuration,
) -> CriticalPath {
    let services = &graph.services;
    let mut rank = vec![0; services.len()];
    for (position, &s) in order.iter().enumerate() {
        rank[s] = position;
    }
    let last_ready_of = |tier: usize| {
        order
            .iter()
            .copied()
            .filter(|&s| services[s].tier == tier)
            .max_by_key(|&s| (ready_at[s], Reverse(rank[s])))
    };
    let mut path = Vec::new();
    let mut at = graph.tiers.len().checked_sub(1).and_then(last_ready_of);
    while let Some(service) = at {
        path.push(service);
        if starts_at[service].is_zero() {
            break;
        }
        let by_dependency = services[service]
            .depends_on
            .iter()
            .copied()
            .find(|&d| ready_at[d] == starts_at[service]);
        at = by_dependency.or_else(|| {
            services[service]
                .tier
                .checked_sub(1)
                .and_then(last_ready_of)
                .filter(|&s| ready_at[s] == starts_at[service])
        });
    }
    path.reverse();
    CriticalPath {
        services: path.iter().map(|&s| services[s].name.clone()).collect(),
        length,
    }
}
