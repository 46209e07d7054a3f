//! The lockdown diff, as plain data: which subjects of a binding a lockdown suspends, and
//! the steps that suspend or restore bindings. The controller lists what exists, asks these
//! functions what to do, and does it in order.
//!
//! Crash safety comes from the order of the steps and from planning again from what exists:
//! a binding is saved before it is touched, and a save is forgotten only once the binding is
//! back exactly as saved. Whatever step a crash interrupts, the next plan starts from the
//! state the crash left and converges (see the `every_crash_point_converges` test).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::rbac::v1::{RoleRef, Subject as RbacSubject},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use serde::{Deserialize, Serialize};

use crate::{
    api::access_policy::{Subject, SubjectKind},
    labels,
};

/// RoleBinding or ClusterRoleBinding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BindingKind {
    RoleBinding,
    ClusterRoleBinding,
}

/// Which binding: kind, namespace (RoleBindings only) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BindingRef {
    pub kind: BindingKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for BindingRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{:?}/{namespace}/{}", self.kind, self.name),
            None => write!(f, "{:?}/{}", self.kind, self.name),
        }
    }
}

/// A RoleBinding or ClusterRoleBinding without the fields the API server sets: what a
/// lockdown saves and what ending it restores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    pub binding: BindingRef,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub owner_references: Vec<OwnerReference>,
    #[serde(default)]
    pub subjects: Vec<RbacSubject>,
    pub role_ref: RoleRef,
}

impl Binding {
    /// Same subjects, role, labels, annotations and owners: the binding as saved.
    pub fn same_as(&self, other: &Binding) -> bool {
        self == other
    }
}

/// Whether a lockdown suspends this subject: a User or Group that is neither a `system:`
/// one (the control plane's own identities and groups such as `system:masters`) nor
/// break-glass. ServiceAccounts are never suspended: life-critical services and the operator
/// itself run as ServiceAccounts and keep their access.
pub fn is_suspended(subject: &RbacSubject, break_glass: &[Subject]) -> bool {
    let kind = match subject.kind.as_str() {
        "User" => SubjectKind::User,
        "Group" => SubjectKind::Group,
        _ => return false,
    };
    if subject.name.starts_with("system:") {
        return false;
    }
    !break_glass
        .iter()
        .any(|b| b.kind == kind && b.name == subject.name)
}

/// Whether the binding carries a grant of an AccessPolicy: grants are the access that a
/// lockdown leaves in place (while in Lockdown every grant has an expiry).
pub fn is_grant(binding: &Binding) -> bool {
    binding.labels.contains_key(labels::ACCESS_POLICY)
        && binding
            .labels
            .get(labels::MANAGED_BY_KEY)
            .map(String::as_str)
            == Some(labels::MANAGED_BY)
}

/// Whether a lockdown touches the binding at all.
pub fn is_suspendable(binding: &Binding, break_glass: &[Subject]) -> bool {
    !is_grant(binding)
        && binding
            .subjects
            .iter()
            .any(|s| is_suspended(s, break_glass))
}

/// One thing to do to a binding, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Save the binding as it is now (before anything else touches it).
    Save(Binding),
    /// Delete the binding: all its subjects are suspended.
    Delete(BindingRef),
    /// Keep the binding with only these subjects (its ServiceAccounts, `system:` and
    /// break-glass subjects).
    Reduce(BindingRef, Vec<RbacSubject>),
    /// Put the saved binding back exactly (create it, or replace what is there).
    Restore(Binding),
    /// Delete the save: the binding is back as saved.
    Forget(BindingRef),
}

/// The steps of a lockdown, given every binding in the cluster and every save (of any
/// policy). A binding already saved is not saved again: the first save is the one that
/// returns, so a binding an attacker recreated during the lockdown never does.
pub fn suspend(
    bindings: &[Binding],
    saved: &BTreeMap<BindingRef, Binding>,
    break_glass: &[Subject],
) -> Vec<Step> {
    let mut steps = Vec::new();
    for binding in bindings {
        if !is_suspendable(binding, break_glass) {
            continue;
        }
        if !saved.contains_key(&binding.binding) {
            steps.push(Step::Save(binding.clone()));
        }
        let kept: Vec<RbacSubject> = binding
            .subjects
            .iter()
            .filter(|s| !is_suspended(s, break_glass))
            .cloned()
            .collect();
        steps.push(if kept.is_empty() {
            Step::Delete(binding.binding.clone())
        } else {
            Step::Reduce(binding.binding.clone(), kept)
        });
    }
    steps
}

/// The saved bindings a lockdown no longer suspends: their subjects became break-glass
/// since they were saved. They are restored while the lockdown goes on.
pub fn released(
    saved: &BTreeMap<BindingRef, Binding>,
    break_glass: &[Subject],
) -> BTreeMap<BindingRef, Binding> {
    saved
        .iter()
        .filter(|(_, binding)| !is_suspendable(binding, break_glass))
        .map(|(r, b)| (r.clone(), b.clone()))
        .collect()
}

/// The steps that end a lockdown, given this policy's saves and the bindings that exist
/// with the same names (absent when deleted).
pub fn restore(
    saved: &BTreeMap<BindingRef, Binding>,
    current: &BTreeMap<BindingRef, Binding>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for (binding, save) in saved {
        if current.get(binding).is_none_or(|now| !now.same_as(save)) {
            steps.push(Step::Restore(save.clone()));
        }
        steps.push(Step::Forget(binding.clone()));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(kind: &str, name: &str) -> RbacSubject {
        RbacSubject {
            kind: kind.into(),
            name: name.into(),
            api_group: (kind != "ServiceAccount").then(|| "rbac.authorization.k8s.io".into()),
            namespace: (kind == "ServiceAccount").then(|| "ns".into()),
        }
    }

    fn binding(name: &str, subjects: Vec<RbacSubject>) -> Binding {
        Binding {
            binding: BindingRef {
                kind: BindingKind::RoleBinding,
                namespace: Some("ns".into()),
                name: name.into(),
            },
            labels: BTreeMap::from([("team".into(), name.into())]),
            annotations: BTreeMap::from([("note".into(), format!("{name} by hand"))]),
            owner_references: Vec::new(),
            subjects,
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: "view".into(),
            },
        }
    }

    fn break_glass() -> Vec<Subject> {
        vec![Subject {
            kind: SubjectKind::Group,
            name: "duty-officers".into(),
            namespace: None,
        }]
    }

    #[test]
    fn only_human_subjects_that_are_neither_system_nor_break_glass_are_suspended() {
        let bg = break_glass();
        assert!(is_suspended(&subject("User", "alice"), &bg));
        assert!(is_suspended(&subject("Group", "clinical-it"), &bg));
        assert!(!is_suspended(&subject("Group", "duty-officers"), &bg));
        // A user of the same name as a break-glass group is not break-glass.
        assert!(is_suspended(&subject("User", "duty-officers"), &bg));
        assert!(!is_suspended(&subject("Group", "system:masters"), &bg));
        assert!(!is_suspended(
            &subject("User", "system:kube-scheduler"),
            &bg
        ));
        assert!(!is_suspended(&subject("ServiceAccount", "dispatch"), &bg));
    }

    #[test]
    fn grant_bindings_are_left_to_their_policy() {
        let mut grant = binding("g", vec![subject("User", "alice")]);
        grant
            .labels
            .insert(labels::ACCESS_POLICY.into(), "policy".into());
        grant
            .labels
            .insert(labels::MANAGED_BY_KEY.into(), labels::MANAGED_BY.into());
        assert!(!is_suspendable(&grant, &[]));
        // The policy label alone (anyone can set a label) does not make a grant.
        grant.labels.remove(labels::MANAGED_BY_KEY);
        assert!(is_suspendable(&grant, &[]));
    }

    #[test]
    fn a_binding_is_saved_before_it_is_deleted_or_reduced() {
        let human = binding("human", vec![subject("User", "alice")]);
        let mixed = binding(
            "mixed",
            vec![
                subject("User", "bob"),
                subject("ServiceAccount", "dispatch"),
                subject("Group", "duty-officers"),
            ],
        );
        let robots = binding("robots", vec![subject("ServiceAccount", "dispatch")]);
        let steps = suspend(
            &[human.clone(), mixed.clone(), robots],
            &BTreeMap::new(),
            &break_glass(),
        );
        assert_eq!(
            steps,
            vec![
                Step::Save(human.clone()),
                Step::Delete(human.binding.clone()),
                Step::Save(mixed.clone()),
                Step::Reduce(
                    mixed.binding.clone(),
                    vec![
                        subject("ServiceAccount", "dispatch"),
                        subject("Group", "duty-officers")
                    ]
                ),
            ]
        );
    }

    #[test]
    fn the_first_save_wins() {
        let original = binding("b", vec![subject("User", "alice")]);
        let recreated = binding("b", vec![subject("User", "mallory")]);
        let saved = BTreeMap::from([(original.binding.clone(), original.clone())]);
        assert_eq!(
            suspend(&[recreated], &saved, &[]),
            vec![Step::Delete(original.binding.clone())]
        );
        // Ending the lockdown brings the original back, not the attacker's.
        let steps = restore(&saved, &BTreeMap::new());
        assert_eq!(
            steps,
            vec![
                Step::Restore(original.clone()),
                Step::Forget(original.binding)
            ]
        );
    }

    #[test]
    fn a_subject_made_break_glass_during_the_lockdown_gets_its_binding_back() {
        let nurse = binding("nurse", vec![subject("User", "nurse")]);
        let both = binding(
            "both",
            vec![subject("User", "nurse"), subject("User", "porter")],
        );
        let saved = BTreeMap::from([
            (nurse.binding.clone(), nurse.clone()),
            (both.binding.clone(), both.clone()),
        ]);
        assert!(released(&saved, &[]).is_empty());
        let now_break_glass = [Subject {
            kind: SubjectKind::User,
            name: "nurse".into(),
            namespace: None,
        }];
        // Only the binding all of whose human subjects are now break-glass comes back.
        assert_eq!(
            released(&saved, &now_break_glass)
                .into_keys()
                .collect::<Vec<_>>(),
            vec![nurse.binding]
        );
    }

    /// The cluster as the steps see it: bindings and saves.
    #[derive(Clone, Debug, Default, PartialEq)]
    struct World {
        bindings: BTreeMap<BindingRef, Binding>,
        saved: BTreeMap<BindingRef, Binding>,
    }

    impl World {
        fn apply(&mut self, step: &Step) {
            match step {
                Step::Save(b) => {
                    // Creating a save that exists fails with AlreadyExists: the first stays.
                    self.saved.entry(b.binding.clone()).or_insert(b.clone());
                }
                Step::Delete(r) => {
                    self.bindings.remove(r);
                }
                Step::Reduce(r, subjects) => {
                    if let Some(b) = self.bindings.get_mut(r) {
                        b.subjects = subjects.clone();
                    }
                }
                Step::Restore(b) => {
                    self.bindings.insert(b.binding.clone(), b.clone());
                }
                Step::Forget(r) => {
                    self.saved.remove(r);
                }
            }
        }

        fn suspend_steps(&self) -> Vec<Step> {
            let bindings: Vec<Binding> = self.bindings.values().cloned().collect();
            suspend(&bindings, &self.saved, &break_glass())
        }

        fn restore_steps(&self) -> Vec<Step> {
            restore(&self.saved, &self.bindings)
        }

        /// Nothing lost: every original binding is either there unchanged or saved exactly.
        fn keeps(&self, originals: &[Binding]) -> bool {
            originals.iter().all(|o| {
                self.bindings.get(&o.binding) == Some(o) || self.saved.get(&o.binding) == Some(o)
            })
        }
    }

    /// Runs the plan of `steps` from `world`, stopping after `crash_after` steps (the
    /// operator killed), then plans again from what is left and runs to the end, as the
    /// restarted operator would.
    fn run_with_crash(
        world: &mut World,
        plan: impl Fn(&World) -> Vec<Step>,
        crash_after: usize,
        originals: &[Binding],
    ) {
        for step in plan(world).iter().take(crash_after) {
            world.apply(step);
            assert!(world.keeps(originals), "lost a binding after {step:?}");
        }
        for _ in 0..3 {
            let steps = plan(world);
            if steps.is_empty() {
                return;
            }
            for step in &steps {
                world.apply(step);
                assert!(world.keeps(originals), "lost a binding after {step:?}");
            }
        }
        panic!("did not converge: still {:?}", plan(world));
    }

    #[test]
    fn every_crash_point_converges_and_ending_the_lockdown_restores_exactly() {
        let originals = vec![
            binding("alice", vec![subject("User", "alice")]),
            binding("clinical", vec![subject("Group", "clinical-it")]),
            binding(
                "mixed",
                vec![
                    subject("User", "bob"),
                    subject("ServiceAccount", "dispatch"),
                ],
            ),
            binding("officers", vec![subject("Group", "duty-officers")]),
            binding("robots", vec![subject("ServiceAccount", "dispatch")]),
        ];
        let start = World {
            bindings: originals
                .iter()
                .map(|b| (b.binding.clone(), b.clone()))
                .collect(),
            saved: BTreeMap::new(),
        };
        let suspend_len = start.suspend_steps().len();
        assert_eq!(
            suspend_len, 6,
            "three bindings saved, then deleted or reduced"
        );
        for crash in 0..=suspend_len {
            let mut world = start.clone();
            run_with_crash(&mut world, World::suspend_steps, crash, &originals);
            // Locked down: no suspended subject is bound any more, everything else is.
            for b in world.bindings.values() {
                assert!(
                    !is_suspendable(b, &break_glass()),
                    "{b:?} still suspendable"
                );
            }
            assert_eq!(world.saved.len(), 3);
            assert!(world.bindings.contains_key(&originals[3].binding));
            assert_eq!(world.bindings[&originals[4].binding], originals[4]);

            let locked = world.clone();
            let restore_len = locked.restore_steps().len();
            for crash in 0..=restore_len {
                let mut world = locked.clone();
                run_with_crash(&mut world, World::restore_steps, crash, &originals);
                assert_eq!(world, start, "crash after {crash} restore steps");
            }
        }
    }
}
