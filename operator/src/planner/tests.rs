//! The planner's stories, on small plans written as users write them.

use std::{collections::BTreeMap, path::Path, time::Duration as StdDuration};

use super::*;
use crate::{api::RecoveryPlan, yaml};

/// A plan spec from YAML; a service without a namespace gets its own name as namespace, which
/// the planner does not look at.
pub(super) fn spec(text: &str) -> RecoveryPlanSpec {
    let mut value: serde_json::Value = yaml::from_str(text).expect("test plan is YAML");
    if let Some(services) = value["services"].as_array_mut() {
        for service in services {
            if service.get("namespace").is_none() {
                service["namespace"] = service["name"].clone();
            }
        }
    }
    serde_json::from_value(value).expect("test plan reads into RecoveryPlanSpec")
}

fn minutes(m: u64) -> StdDuration {
    StdDuration::from_secs(m * 60)
}

fn lazio() -> RecoveryPlanSpec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lazio/recovery-plan.yaml");
    let text = std::fs::read_to_string(path).expect("read the Lazio plan");
    let document = yaml::documents(&text)
        .expect("Lazio plan is YAML")
        .remove(0);
    serde_json::from_value::<RecoveryPlan>(document)
        .expect("Lazio plan reads")
        .spec
}

fn errors(text: &str) -> Vec<PlanError> {
    plan(&spec(text)).expect_err("the plan is invalid")
}

fn names(services: &[String]) -> Vec<&str> {
    services.iter().map(String::as_str).collect()
}

#[test]
fn the_lazio_plan_rebuilds_emergencies_first_and_booking_last() {
    let order = plan(&lazio()).expect("the Lazio plan is valid");
    let waves: Vec<(&str, Vec<&str>)> = order
        .waves
        .iter()
        .map(|w| (w.tier.as_str(), names(&w.services)))
        .collect();
    assert_eq!(
        waves,
        [
            (
                "life-critical",
                vec!["dispatch-118", "emergency-112", "civil-protection-room"]
            ),
            ("clinical", vec!["hospital-network"]),
            ("clinical", vec!["clinical-records"]),
            ("clinical", vec!["radiology", "laboratory"]),
            ("finance", vec!["balance-ledger"]),
            ("booking", vec!["cup-booking", "regional-website"]),
            ("booking", vec!["vaccine-booking"]),
        ]
    );
    assert_eq!(
        names(&order.critical_path.services),
        [
            "dispatch-118",
            "hospital-network",
            "clinical-records",
            "radiology",
            "balance-ledger",
            "cup-booking",
            "vaccine-booking"
        ]
    );
    assert_eq!(order.critical_path.length, minutes(4 * 60 + 48));
    let ready: Vec<_> = order.tiers.iter().map(|t| t.ready_at).collect();
    assert_eq!(ready, [minutes(3), minutes(88), minutes(108), minutes(288)]);
    assert!(order.tiers.iter().all(PlannedTier::meets_rto));
}

#[test]
fn a_clinical_service_waits_for_the_life_critical_tier_even_without_a_dependency() {
    let order = plan(&spec(
        "
tiers:
  - {name: life-critical, rto: 15m}
  - {name: clinical, rto: 4h}
services:
  - {name: records, tier: clinical, expectedDuration: 1m}
  - {name: emergency-112, tier: life-critical, expectedDuration: 10m}
",
    ))
    .expect("valid");
    let order_names: Vec<_> = order.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(order_names, ["emergency-112", "records"]);
    let records = order.service("records").expect("planned");
    assert_eq!(records.starts_at, minutes(10));
    assert_eq!(records.wave, 1);
}

#[test]
fn within_a_tier_the_longest_chain_starts_first() {
    let order = plan(&spec(
        "
tiers: [{name: clinical, rto: 4h}]
services:
  - {name: website, tier: clinical, expectedDuration: 30m}
  - {name: network, tier: clinical, expectedDuration: 5m}
  - {name: records, tier: clinical, expectedDuration: 45m, dependsOn: [network]}
",
    ))
    .expect("valid");
    assert_eq!(names(&order.waves[0].services), ["network", "website"]);
    assert_eq!(order.service("network").map(|s| s.chain), Some(minutes(50)));
    assert_eq!(names(&order.critical_path.services), ["network", "records"]);
    assert_eq!(order.critical_path.length, minutes(50));
}

#[test]
fn a_service_without_expected_duration_counts_one_minute() {
    let order = plan(&spec(
        "
tiers: [{name: t, rto: 1h}]
services: [{name: a, tier: t}]
",
    ))
    .expect("valid");
    assert_eq!(order.critical_path.length, DEFAULT_EXPECTED_DURATION);
}

#[test]
fn a_dependency_on_a_missing_service_names_the_field() {
    let found = errors(
        "
tiers: [{name: t, rto: 1h}]
services:
  - {name: a, tier: t}
  - {name: b, tier: t, dependsOn: [a, ghost]}
",
    );
    assert_eq!(
        found,
        [PlanError::UnknownDependency {
            service: "b".into(),
            dependency: "ghost".into(),
            path: "spec.services[1].dependsOn[1]".into(),
        }]
    );
    assert_eq!(
        found[0].to_string(),
        "spec.services[1].dependsOn[1]: service `b` depends on `ghost`, but no service of the plan is named `ghost`"
    );
}

#[test]
fn a_cycle_is_spelled_out_in_dependency_order() {
    let found = errors(
        "
tiers: [{name: t, rto: 1h}]
services:
  - {name: a, tier: t, dependsOn: [b]}
  - {name: b, tier: t, dependsOn: [c]}
  - {name: c, tier: t, dependsOn: [a]}
  - {name: d, tier: t, dependsOn: [a]}
",
    );
    assert_eq!(
        found,
        [PlanError::Cycle {
            cycle: vec!["a".into(), "b".into(), "c".into(), "a".into()],
            paths: vec![
                "spec.services[0].dependsOn[0]".into(),
                "spec.services[1].dependsOn[0]".into(),
                "spec.services[2].dependsOn[0]".into(),
            ],
        }]
    );
    assert!(found[0].to_string().contains("a -> b -> c -> a"));
}

#[test]
fn every_separate_cycle_is_reported_and_a_self_dependency_is_one() {
    let found = errors(
        "
tiers: [{name: t, rto: 1h}]
services:
  - {name: a, tier: t, dependsOn: [a]}
  - {name: b, tier: t, dependsOn: [c]}
  - {name: c, tier: t, dependsOn: [b]}
",
    );
    let cycles: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(cycles.len(), 2, "{cycles:#?}");
    assert!(cycles[0].contains("a -> a"));
    assert!(cycles[1].contains("b -> c -> b"));
}

#[test]
fn a_dependency_on_a_later_tier_is_refused() {
    let found = errors(
        "
tiers: [{name: clinical, rto: 4h}, {name: booking, rto: 72h}]
services:
  - {name: records, tier: clinical, dependsOn: [cup]}
  - {name: cup, tier: booking}
",
    );
    assert_eq!(
        found,
        [PlanError::LaterTierDependency {
            service: "records".into(),
            tier: "clinical".into(),
            dependency: "cup".into(),
            dependency_tier: "booking".into(),
            path: "spec.services[0].dependsOn[0]".into(),
        }]
    );
}

#[test]
fn every_problem_of_a_plan_is_reported_at_once() {
    let found = errors(
        "
tiers:
  - {name: clinical, rto: 4h}
  - {name: clinical, rto: 5h}
  - {name: empty, rto: 1x}
services:
  - {name: a, tier: clinical}
  - {name: a, tier: clinical, expectedDuration: soon}
  - {name: b, tier: nowhere, dependsOn: [a]}
",
    );
    let text: Vec<String> = found.iter().map(ToString::to_string).collect();
    let expected = [
        "spec.tiers[0], spec.tiers[1]: the tier name `clinical` is used 2 times",
        "spec.services[0], spec.services[1]: the service name `a` is used 2 times",
        "spec.tiers[2].rto: \"1x\" is not a duration",
        "spec.services[1].expectedDuration: \"soon\" is not a duration",
        "spec.services[2].tier: service `b` is in tier `nowhere`, which is not one of spec.tiers (clinical, clinical, empty)",
        "spec.tiers[2]: tier `empty` has no services",
    ];
    assert_eq!(text.len(), expected.len(), "{text:#?}");
    for start in expected {
        assert!(
            text.iter().any(|t| t.starts_with(start)),
            "missing {start:?} in {text:#?}"
        );
    }
}

#[test]
fn a_plan_without_tiers_says_so() {
    assert_eq!(errors("{tiers: [], services: []}"), [PlanError::NoTiers]);
}

#[test]
fn at_the_start_only_the_first_tier_may_start_and_the_rest_say_why() {
    let order = plan(&lazio()).expect("valid");
    let steps = order.next_steps(&BTreeMap::new());
    assert_eq!(
        steps.start,
        ["dispatch-118", "emergency-112", "civil-protection-room"]
    );
    let blocked: BTreeMap<&str, Vec<String>> = steps
        .blocked
        .iter()
        .map(|b| {
            (
                b.service.as_str(),
                b.on.iter().map(ToString::to_string).collect(),
            )
        })
        .collect();
    assert_eq!(blocked["hospital-network"], ["tier/life-critical"]);
    assert_eq!(
        blocked["cup-booking"],
        [
            "clinical-records",
            "tier/life-critical",
            "tier/clinical",
            "tier/finance"
        ]
    );
    assert!(steps.blocked.iter().all(|b| !b.behind_failure));
}

fn progress(entries: &[(&str, ServiceProgress)]) -> BTreeMap<String, ServiceProgress> {
    entries
        .iter()
        .map(|(name, state)| ((*name).to_owned(), *state))
        .collect()
}

const TWO_TIERS: &str = "
tiers: [{name: first, rto: 1h}, {name: second, rto: 2h}]
onFailure: ONFAILURE
services:
  - {name: a, tier: first}
  - {name: b, tier: first, dependsOn: [a]}
  - {name: c, tier: first}
  - {name: d, tier: second}
";

#[test]
fn a_failure_halts_its_dependants_and_the_lower_tiers() {
    let order = plan(&spec(&TWO_TIERS.replace("ONFAILURE", "HaltLowerTiers"))).expect("valid");
    let steps = order.next_steps(&progress(&[("a", ServiceProgress::Failed)]));
    assert_eq!(steps.start, ["c"], "an independent service goes on");
    let b = &steps.blocked[0];
    assert_eq!((b.service.as_str(), b.behind_failure), ("b", true));
    let d = &steps.blocked[1];
    assert_eq!(d.on, [Blocker::Tier("first".into())]);
    assert!(d.behind_failure);
}

#[test]
fn with_continue_a_failure_gives_up_its_dependants_and_the_next_tier_starts() {
    let order = plan(&spec(&TWO_TIERS.replace("ONFAILURE", "Continue"))).expect("valid");
    let steps = order.next_steps(&progress(&[
        ("a", ServiceProgress::Failed),
        ("c", ServiceProgress::Ready),
    ]));
    assert_eq!(steps.start, ["d"]);
    assert_eq!(steps.blocked.len(), 1);
    assert_eq!(steps.blocked[0].on, [Blocker::Service("a".into())]);
    assert!(steps.blocked[0].behind_failure);
}

#[test]
fn a_started_service_holds_its_tier_and_is_not_started_again() {
    let order = plan(&spec(&TWO_TIERS.replace("ONFAILURE", "Continue"))).expect("valid");
    let steps = order.next_steps(&progress(&[
        ("a", ServiceProgress::Ready),
        ("c", ServiceProgress::Started),
    ]));
    assert_eq!(steps.start, ["b"]);
    assert_eq!(steps.blocked[0].on, [Blocker::Tier("first".into())]);
}
