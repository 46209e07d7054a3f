//! Properties of the planner over random plans: the order never breaks a rule, the critical
//! path is a real chain of the schedule, and a broken plan is always refused with the
//! services at fault named.

use std::collections::{BTreeMap, BTreeSet};

use proptest::{prelude::*, sample::Index};
use serde_json::json;

use super::*;

/// A random valid plan: up to 4 tiers, none empty, each service depending only on services
/// of earlier tiers or earlier in its own tier (so no cycle), listed in a shuffled order so
/// that plan order says nothing about dependencies.
fn valid_plan() -> impl Strategy<Value = RecoveryPlanSpec> {
    (1usize..=4)
        .prop_flat_map(|tiers| {
            let service = (
                0..tiers,
                prop::collection::vec(any::<Index>(), 0..4),
                prop::option::of(1u64..7200),
            );
            (
                Just(tiers),
                prop::collection::vec(service, tiers..tiers + 16),
            )
        })
        .prop_flat_map(|(tiers, raw)| {
            let services: Vec<serde_json::Value> = raw
                .iter()
                .enumerate()
                .map(|(i, (tier, picks, seconds))| {
                    // The first services fill every tier once, so that none is empty.
                    let tier = if i < tiers { i } else { *tier };
                    let tier_of = |j: usize| if j < tiers { j } else { raw[j].0 };
                    let candidates: Vec<usize> = (0..i)
                        .filter(|&j| tier_of(j) < tier || (tier_of(j) == tier && j < i))
                        .collect();
                    let mut depends_on: Vec<String> = Vec::new();
                    if !candidates.is_empty() {
                        for pick in picks {
                            let name = format!("s{}", candidates[pick.index(candidates.len())]);
                            if !depends_on.contains(&name) {
                                depends_on.push(name);
                            }
                        }
                    }
                    let mut service = json!({
                        "name": format!("s{i}"),
                        "tier": format!("t{tier}"),
                        "namespace": format!("s{i}"),
                        "dependsOn": depends_on,
                    });
                    if let Some(seconds) = seconds {
                        service["expectedDuration"] = json!(format!("{seconds}s"));
                    }
                    service
                })
                .collect();
            (Just(tiers), Just(services).prop_shuffle())
        })
        .prop_map(|(tiers, services)| {
            let tiers: Vec<_> = (0..tiers)
                .map(|t| json!({"name": format!("t{t}"), "rto": "1h"}))
                .collect();
            serde_json::from_value(json!({"tiers": tiers, "services": services}))
                .expect("generated plan reads into RecoveryPlanSpec")
        })
}

fn tier_position(spec: &RecoveryPlanSpec, tier: &str) -> usize {
    spec.tiers
        .iter()
        .position(|t| t.name == tier)
        .expect("known tier")
}

/// Every service that depends on `service`, directly or not, and `service` itself.
fn dependants_of(spec: &RecoveryPlanSpec, service: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::from([service.to_owned()]);
    loop {
        let before = found.len();
        for s in &spec.services {
            if s.depends_on.iter().any(|d| found.contains(d)) {
                found.insert(s.name.clone());
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

fn pick<T: Clone>(items: &[T], index: &Index) -> Option<T> {
    (!items.is_empty()).then(|| items[index.index(items.len())].clone())
}

proptest! {
    #[test]
    fn no_service_comes_before_a_dependency_or_an_earlier_tier(spec in valid_plan()) {
        let order = plan(&spec).expect("generated plans are valid");
        prop_assert_eq!(order.services.len(), spec.services.len());
        let position: BTreeMap<&str, usize> = order
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        prop_assert_eq!(position.len(), spec.services.len(), "a service is listed twice");
        for service in &order.services {
            let at = position[service.name.as_str()];
            let wave = service.wave;
            prop_assert!(order.waves[wave].services.contains(&service.name));
            for dependency in &service.depends_on {
                prop_assert!(position[dependency.as_str()] < at);
                let dependency = order.service(dependency).expect("planned");
                prop_assert!(dependency.wave < wave);
                prop_assert!(dependency.ready_at <= service.starts_at);
            }
            let tier = tier_position(&spec, &service.tier);
            for other in &order.services {
                if tier_position(&spec, &other.tier) < tier {
                    prop_assert!(position[other.name.as_str()] < at);
                    prop_assert!(other.wave < wave);
                    prop_assert!(other.ready_at <= service.starts_at);
                }
            }
        }
        let in_waves: usize = order.waves.iter().map(|w| w.services.len()).sum();
        prop_assert_eq!(in_waves, spec.services.len());
    }

    #[test]
    fn the_critical_path_is_a_tight_chain_between_the_longest_service_and_the_sum(
        spec in valid_plan()
    ) {
        let order = plan(&spec).expect("generated plans are valid");
        let path = &order.critical_path;
        let longest = order.services.iter().map(|s| s.expected_duration).max();
        let sum: StdDuration = order.services.iter().map(|s| s.expected_duration).sum();
        prop_assert!(Some(path.length) >= longest);
        prop_assert!(path.length <= sum);
        prop_assert_eq!(Some(path.length), order.tiers.last().map(|t| t.ready_at));

        let steps: Vec<&PlannedService> = path
            .services
            .iter()
            .map(|name| order.service(name).expect("planned"))
            .collect();
        let on_path: StdDuration = steps.iter().map(|s| s.expected_duration).sum();
        prop_assert_eq!(on_path, path.length);
        prop_assert_eq!(steps.first().map(|s| s.starts_at), Some(StdDuration::ZERO));
        prop_assert_eq!(steps.last().map(|s| s.ready_at), Some(path.length));
        for pair in steps.windows(2) {
            prop_assert_eq!(pair[0].ready_at, pair[1].starts_at);
        }
    }

    /// Driving a whole recovery with `next_steps`, completing services in a random order and
    /// failing some: nothing starts before its rules allow, and the recovery only stops
    /// short when a failure is in the way.
    #[test]
    fn a_recovery_driven_by_next_steps_keeps_the_rules(
        spec in valid_plan(),
        outcomes in prop::collection::vec((any::<Index>(), prop::bool::weighted(0.1)), 64),
        halt in any::<bool>(),
    ) {
        let mut spec = spec;
        spec.on_failure = if halt { OnFailure::HaltLowerTiers } else { OnFailure::Continue };
        let order = plan(&spec).expect("generated plans are valid");
        let mut progress: BTreeMap<String, ServiceProgress> = BTreeMap::new();
        let mut outcomes = outcomes.iter().cycle();
        loop {
            let steps = order.next_steps(&progress);
            for name in &steps.start {
                let service = order.service(name).expect("planned");
                for dependency in &service.depends_on {
                    prop_assert_eq!(progress.get(dependency), Some(&ServiceProgress::Ready));
                }
                let tier = tier_position(&spec, &service.tier);
                for other in &order.services {
                    if tier_position(&spec, &other.tier) < tier {
                        let state = progress.get(&other.name);
                        if halt {
                            prop_assert_eq!(state, Some(&ServiceProgress::Ready));
                        } else {
                            prop_assert_ne!(state, Some(&ServiceProgress::Started));
                        }
                    }
                }
                progress.insert(name.clone(), ServiceProgress::Started);
            }
            let running: Vec<String> = progress
                .iter()
                .filter(|(_, state)| **state == ServiceProgress::Started)
                .map(|(name, _)| name.clone())
                .collect();
            let Some((index, fails)) = outcomes.next() else { break };
            let Some(finished) = pick(&running, index) else {
                let failed = progress.values().any(|s| *s == ServiceProgress::Failed);
                prop_assert!(steps.start.is_empty());
                if !failed {
                    prop_assert!(steps.blocked.is_empty());
                    prop_assert_eq!(progress.len(), order.services.len());
                }
                for blocked in &steps.blocked {
                    prop_assert!(blocked.behind_failure, "{} is stuck", blocked.service);
                }
                break;
            };
            let state = if *fails { ServiceProgress::Failed } else { ServiceProgress::Ready };
            progress.insert(finished, state);
        }
    }

    #[test]
    fn a_cycle_is_refused_and_spelled_out(
        spec in valid_plan(),
        from in any::<Index>(),
        to in any::<Index>(),
    ) {
        let mut spec = spec;
        let from = from.index(spec.services.len());
        let name = spec.services[from].name.clone();
        // Depending on a service that already depends on it closes a cycle.
        let closing: Vec<String> = dependants_of(&spec, &name).into_iter().collect();
        let target = pick(&closing, &to).expect("a service depends on itself at least");
        spec.services[from].depends_on.push(target.clone());

        let errors = plan(&spec).expect_err("a plan with a cycle is refused");
        let cycle = errors.iter().find_map(|e| match e {
            PlanError::Cycle { cycle, .. } => Some(cycle.clone()),
            _ => None,
        });
        let cycle = cycle.expect("a cycle error");
        prop_assert!(cycle.contains(&name) && cycle.contains(&target), "{cycle:?}");
        prop_assert_eq!(cycle.first(), cycle.last());
        for pair in cycle.windows(2) {
            let service = spec.services.iter().find(|s| s.name == pair[0]).expect("known");
            prop_assert!(service.depends_on.contains(&pair[1]), "{cycle:?}");
        }
        let names_both = errors.iter().any(|e| {
            let named = e.services();
            named.contains(&name.as_str()) && named.contains(&target.as_str())
        });
        prop_assert!(names_both, "{errors:?}");
        let text = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
        prop_assert!(text.contains(&cycle.join(" -> ")));
    }

    #[test]
    fn an_unknown_dependency_is_refused_with_its_field(
        spec in valid_plan(),
        at in any::<Index>(),
    ) {
        let mut spec = spec;
        let at = at.index(spec.services.len());
        spec.services[at].depends_on.push("ghost".into());
        let position = spec.services[at].depends_on.len() - 1;
        let errors = plan(&spec).expect_err("an unknown dependency is refused");
        prop_assert_eq!(
            errors,
            vec![PlanError::UnknownDependency {
                service: spec.services[at].name.clone(),
                dependency: "ghost".into(),
                path: format!("spec.services[{at}].dependsOn[{position}]"),
            }]
        );
    }

    #[test]
    fn a_dependency_on_a_later_tier_is_refused_naming_both_services(
        spec in valid_plan(),
        at in any::<Index>(),
        to in any::<Index>(),
    ) {
        let mut spec = spec;
        let last_tier = spec.tiers.len() - 1;
        let early: Vec<usize> = (0..spec.services.len())
            .filter(|&i| tier_position(&spec, &spec.services[i].tier) < last_tier)
            .collect();
        prop_assume!(!early.is_empty());
        let from = early[at.index(early.len())];
        let from_tier = tier_position(&spec, &spec.services[from].tier);
        let later: Vec<String> = spec
            .services
            .iter()
            .filter(|s| tier_position(&spec, &s.tier) > from_tier)
            .map(|s| s.name.clone())
            .collect();
        let target = pick(&later, &to).expect("every tier has a service");
        spec.services[from].depends_on.push(target.clone());

        let errors = plan(&spec).expect_err("a dependency on a later tier is refused");
        let name = spec.services[from].name.clone();
        prop_assert!(
            errors.iter().any(|e| matches!(
                e,
                PlanError::LaterTierDependency { service, dependency, .. }
                    if *service == name && *dependency == target
            )),
            "{errors:?}"
        );
    }
}
