//! Reading a plan's spec into a dependency graph over indices, and every reason it cannot
//! be one. Nothing is planned until the graph is known to be sound: a partial order would
//! start services that a fixed plan would not start.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration as StdDuration,
};

use super::{DEFAULT_EXPECTED_DURATION, PlanError};
use crate::api::recovery_plan::RecoveryPlanSpec;

/// A plan whose names all resolve, with no cycle and no dependency on a later tier.
pub(super) struct Graph {
    /// In plan order.
    pub tiers: Vec<TierNode>,
    /// In plan order (indices are positions in `spec.services`).
    pub services: Vec<ServiceNode>,
}

pub(super) struct TierNode {
    pub name: String,
    pub rto: StdDuration,
}

pub(super) struct ServiceNode {
    pub name: String,
    /// Index into [`Graph::tiers`].
    pub tier: usize,
    /// Indices into [`Graph::services`], without repeats, in the order written.
    pub depends_on: Vec<usize>,
    pub expected_duration: StdDuration,
}

/// A `dependsOn` entry that names a known service.
struct Edge {
    from: usize,
    to: usize,
    /// Position in `spec.services[from].dependsOn`, for the field path.
    position: usize,
}

pub(super) fn build(spec: &RecoveryPlanSpec) -> Result<Graph, Vec<PlanError>> {
    let mut errors = Vec::new();
    if spec.tiers.is_empty() {
        errors.push(PlanError::NoTiers);
    }
    errors.extend(repeated_names(spec));
    let tier_index = first_positions(spec.tiers.iter().map(|t| t.name.as_str()));
    let tiers = read_tiers(spec, &mut errors);
    let (mut services, service_tiers) = read_services(spec, &tier_index, &mut errors);
    let edges = read_dependencies(spec, &service_tiers, &mut services, &mut errors);
    errors.extend(empty_tiers(spec, &tier_index, &service_tiers));
    errors.extend(cycles(&services, &edges));

    if errors.is_empty() {
        Ok(Graph { tiers, services })
    } else {
        Err(errors)
    }
}

fn repeated_names(spec: &RecoveryPlanSpec) -> Vec<PlanError> {
    let tiers = repeated(spec.tiers.iter().map(|t| t.name.as_str()))
        .into_iter()
        .map(|(name, positions)| PlanError::DuplicateTier {
            name: name.to_owned(),
            paths: positions
                .iter()
                .map(|i| format!("spec.tiers[{i}]"))
                .collect(),
        });
    let services = repeated(spec.services.iter().map(|s| s.name.as_str()))
        .into_iter()
        .map(|(name, positions)| PlanError::DuplicateService {
            name: name.to_owned(),
            paths: positions
                .iter()
                .map(|i| format!("spec.services[{i}]"))
                .collect(),
        });
    tiers.chain(services).collect()
}

fn read_tiers(spec: &RecoveryPlanSpec, errors: &mut Vec<PlanError>) -> Vec<TierNode> {
    let mut tiers = Vec::with_capacity(spec.tiers.len());
    for (i, tier) in spec.tiers.iter().enumerate() {
        let rto = tier.rto.to_std().unwrap_or_else(|source| {
            errors.push(PlanError::InvalidDuration {
                path: format!("spec.tiers[{i}].rto"),
                source,
            });
            StdDuration::ZERO
        });
        tiers.push(TierNode {
            name: tier.name.clone(),
            rto,
        });
    }
    tiers
}

/// The services without their dependencies yet, and the tier of each: `None` for an unknown
/// tier, so that the dependencies of such a service are still checked.
fn read_services(
    spec: &RecoveryPlanSpec,
    tier_index: &BTreeMap<&str, usize>,
    errors: &mut Vec<PlanError>,
) -> (Vec<ServiceNode>, Vec<Option<usize>>) {
    let mut service_tiers = Vec::with_capacity(spec.services.len());
    let mut services = Vec::with_capacity(spec.services.len());
    for (i, service) in spec.services.iter().enumerate() {
        let tier = tier_index.get(service.tier.as_str()).copied();
        if tier.is_none() {
            errors.push(PlanError::UnknownTier {
                service: service.name.clone(),
                tier: service.tier.clone(),
                path: format!("spec.services[{i}].tier"),
                known: spec.tiers.iter().map(|t| t.name.clone()).collect(),
            });
        }
        service_tiers.push(tier);
        let expected_duration = match &service.expected_duration {
            None => DEFAULT_EXPECTED_DURATION,
            Some(duration) => duration.to_std().unwrap_or_else(|source| {
                errors.push(PlanError::InvalidDuration {
                    path: format!("spec.services[{i}].expectedDuration"),
                    source,
                });
                DEFAULT_EXPECTED_DURATION
            }),
        };
        services.push(ServiceNode {
            name: service.name.clone(),
            tier: tier.unwrap_or_default(),
            depends_on: Vec::new(),
            expected_duration,
        });
    }
    (services, service_tiers)
}

/// Fills in `depends_on` and returns the edges, for the field paths of cycles. A name used
/// by two services resolves to the first; the repeat is an error of its own.
fn read_dependencies(
    spec: &RecoveryPlanSpec,
    service_tiers: &[Option<usize>],
    services: &mut [ServiceNode],
    errors: &mut Vec<PlanError>,
) -> Vec<Edge> {
    let service_index = first_positions(spec.services.iter().map(|s| s.name.as_str()));
    let mut edges = Vec::new();
    for (from, service) in spec.services.iter().enumerate() {
        for (position, dependency) in service.depends_on.iter().enumerate() {
            let path = format!("spec.services[{from}].dependsOn[{position}]");
            let Some(&to) = service_index.get(dependency.as_str()) else {
                errors.push(PlanError::UnknownDependency {
                    service: service.name.clone(),
                    dependency: dependency.clone(),
                    path,
                });
                continue;
            };
            if let (Some(tier), Some(dependency_tier)) = (service_tiers[from], service_tiers[to])
                && dependency_tier > tier
            {
                errors.push(PlanError::LaterTierDependency {
                    service: service.name.clone(),
                    tier: spec.tiers[tier].name.clone(),
                    dependency: dependency.clone(),
                    dependency_tier: spec.tiers[dependency_tier].name.clone(),
                    path,
                });
            }
            if !services[from].depends_on.contains(&to) {
                services[from].depends_on.push(to);
                edges.push(Edge { from, to, position });
            }
        }
    }
    edges
}

/// Only the first tier of a repeated name can hold services; the repeat is already an error
/// of its own and is not also reported as empty.
fn empty_tiers(
    spec: &RecoveryPlanSpec,
    tier_index: &BTreeMap<&str, usize>,
    service_tiers: &[Option<usize>],
) -> Vec<PlanError> {
    spec.tiers
        .iter()
        .enumerate()
        .filter(|(i, tier)| {
            tier_index.get(tier.name.as_str()) == Some(i) && !service_tiers.contains(&Some(*i))
        })
        .map(|(i, tier)| PlanError::EmptyTier {
            tier: tier.name.clone(),
            path: format!("spec.tiers[{i}]"),
        })
        .collect()
}

fn first_positions<'a>(names: impl Iterator<Item = &'a str>) -> BTreeMap<&'a str, usize> {
    let mut positions = BTreeMap::new();
    for (i, name) in names.enumerate() {
        positions.entry(name).or_insert(i);
    }
    positions
}

/// Names used more than once, with every position, in the order of their first use.
fn repeated<'a>(names: impl Iterator<Item = &'a str>) -> Vec<(&'a str, Vec<usize>)> {
    let mut positions: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, name) in names.enumerate() {
        positions.entry(name).or_default().push(i);
    }
    let mut out: Vec<_> = positions
        .into_iter()
        .filter(|(_, at)| at.len() > 1)
        .collect();
    out.sort_by_key(|(_, at)| at[0]);
    out
}

/// One cycle per group of services that depend on each other (a strongly connected
/// component), spelled from the group's first service in plan order along the shortest way
/// back to it. A group can hold more cycles than the one shown; breaking the one shown and
/// planning again shows the next, which is what a user fixing the plan does anyway.
fn cycles(services: &[ServiceNode], edges: &[Edge]) -> Vec<PlanError> {
    let mut errors = Vec::new();
    let mut components = strongly_connected(services);
    components.iter_mut().for_each(|c| c.sort_unstable());
    components.sort_unstable();
    for component in components {
        let start = component[0];
        let is_cycle = component.len() > 1 || services[start].depends_on.contains(&start);
        if !is_cycle {
            continue;
        }
        let path = shortest_way_back(services, &component, start);
        let mut cycle = vec![services[start].name.clone()];
        let mut paths = Vec::new();
        for pair in path.windows(2) {
            let (from, to) = (pair[0], pair[1]);
            cycle.push(services[to].name.clone());
            if let Some(edge) = edges.iter().find(|e| e.from == from && e.to == to) {
                paths.push(format!(
                    "spec.services[{from}].dependsOn[{}]",
                    edge.position
                ));
            }
        }
        errors.push(PlanError::Cycle { cycle, paths });
    }
    errors
}

/// The services from `start` back to `start` through dependencies inside `component`,
/// found breadth first so that the cycle shown is a shortest one.
fn shortest_way_back(services: &[ServiceNode], component: &[usize], start: usize) -> Vec<usize> {
    let mut came_from: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(at) = queue.pop_front() {
        for &next in &services[at].depends_on {
            if component.binary_search(&next).is_err() {
                continue;
            }
            if next == start {
                let mut path = vec![start, at];
                let mut walk = at;
                while walk != start {
                    walk = came_from[&walk];
                    path.push(walk);
                }
                path.reverse();
                return path;
            }
            if let std::collections::btree_map::Entry::Vacant(entry) = came_from.entry(next) {
                entry.insert(at);
                queue.push_back(next);
            }
        }
    }
    // Unreachable for a strongly connected component; a plain listing still names them all.
    component.iter().copied().chain([start]).collect()
}

/// Tarjan's algorithm, with an explicit stack: a plan may hold a thousand services in one
/// chain, deeper than recursion should go.
fn strongly_connected(services: &[ServiceNode]) -> Vec<Vec<usize>> {
    const UNSEEN: usize = usize::MAX;
    let count = services.len();
    let mut index = vec![UNSEEN; count];
    let mut low = vec![0; count];
    let mut on_stack = vec![false; count];
    let mut stack = Vec::new();
    let mut next_index = 0;
    let mut components = Vec::new();

    for root in 0..count {
        if index[root] != UNSEEN {
            continue;
        }
        index[root] = next_index;
        low[root] = next_index;
        next_index += 1;
        stack.push(root);
        on_stack[root] = true;
        // (service, how many of its dependencies were visited already)
        let mut calls = vec![(root, 0usize)];
        while let Some(frame) = calls.last_mut() {
            let (at, visited) = *frame;
            if let Some(&next) = services[at].depends_on.get(visited) {
                frame.1 += 1;
                if index[next] == UNSEEN {
                    index[next] = next_index;
                    low[next] = next_index;
                    next_index += 1;
                    stack.push(next);
                    on_stack[next] = true;
                    calls.push((next, 0));
                } else if on_stack[next] {
                    low[at] = low[at].min(index[next]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(caller, _)) = calls.last() {
                low[caller] = low[caller].min(low[at]);
            }
            if low[at] == index[at] {
                let mut component = Vec::new();
                while let Some(member) = stack.pop() {
                    on_stack[member] = false;
                    component.push(member);
                    if member == at {
                        break;
                    }
                }
                components.push(component);
            }
        }
    }
    components
}
