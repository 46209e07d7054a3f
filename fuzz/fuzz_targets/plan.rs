//! The path of a plan from YAML text to a recovery: parse every document as `resurgo plan`
//! does, check it with the planner, and drive a recovery with `next_steps`, failing every
//! fourth service. Nothing may panic, and a started service never precedes one of its
//! dependencies.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use resurgo::{
    api::recovery_plan::RecoveryPlan,
    planner::{self, ServiceProgress},
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(documents) = resurgo::yaml::documents(text) else {
        return;
    };
    for document in documents {
        let Ok(plan) = serde_json::from_value::<RecoveryPlan>(document) else {
            continue;
        };
        match planner::plan(&plan.spec) {
            Err(errors) => {
                assert!(!errors.is_empty());
                for error in errors {
                    let _ = (error.to_string(), error.services());
                }
            }
            Ok(order) => drive(&order),
        }
    }
});

fn drive(order: &planner::RecoveryOrder) {
    let mut progress: BTreeMap<String, ServiceProgress> = BTreeMap::new();
    let mut finished = 0usize;
    // Each round starts something or finishes something, so this many rounds always end it.
    for _ in 0..=2 * order.services.len() {
        let steps = order.next_steps(&progress);
        for name in &steps.start {
            let service = order.service(name).expect("a started service is planned");
            for dependency in &service.depends_on {
                assert_eq!(progress.get(dependency), Some(&ServiceProgress::Ready));
            }
            progress.insert(name.clone(), ServiceProgress::Started);
        }
        let Some(next) = progress
            .iter()
            .find(|(_, state)| **state == ServiceProgress::Started)
            .map(|(name, _)| name.clone())
        else {
            return;
        };
        finished += 1;
        let state = if finished % 4 == 0 {
            ServiceProgress::Failed
        } else {
            ServiceProgress::Ready
        };
        progress.insert(next, state);
    }
    panic!("the recovery did not end within twice the number of services");
}
