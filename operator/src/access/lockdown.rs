//! The lockdown diff, as plain data: which subjects of a binding a lockdown suspends, and
//! the steps that suspend or restore bindings. The controller lists what exists, asks these
//! functions what to do, and does it.
//!
//! There is one lockdown for the whole cluster, whatever the number of policies in
//! Lockdown: a binding is saved once in the ledger (SuspendedBindings, which only the
//! operator and cluster admins can write), stays away while any policy is in Lockdown, and
//! comes back only when none is. Nothing others can write decides anything here: a grant is
//! recognised by being exactly what a policy's spec asks for, the control plane's own
//! bindings by their exact name and content, and what comes back is what the ledger holds.
//!
//! Crash safety comes from the order of the steps and from planning again from what exists:
//! a binding is saved before it is touched, and a save is forgotten only once the binding is
//! back exactly as saved. Whatever step a crash interrupts, the next plan starts from the
//! state the crash left and converges (see the `every_crash_point_converges` test).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::rbac::v1::{RoleRef, Subject as RbacSubject},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
    jiff::Timestamp,
};
use serde::{Deserialize, Serialize};

use super::bootstrap;
use crate::api::access_policy::{Subject, SubjectKind};

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

/// A binding as listed from the API server: what it says, and what the server set on it.
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    pub binding: Binding,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub created: Option<Timestamp>,
}

/// An entry of the ledger: a binding saved by a lockdown.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub binding: Binding,
    /// The policy whose reconcile saved it.
    pub policy: String,
    /// The binding's creationTimestamp when it was saved.
    pub created: Option<Timestamp>,
    pub suspended_at: Timestamp,
    /// Made while a lockdown was in force: not restored when it ends.
    pub held: bool,
    /// A cluster admin asked for a held entry to come back anyway.
    pub release: bool,
}

/// What decides, for the whole cluster, which bindings a lockdown takes away.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// Some policy is in Lockdown.
    pub active: bool,
    /// When the lockdown in force began: a binding created after it is held.
    pub since: Option<Timestamp>,
    /// The break-glass subjects of every policy: a subject any policy lists is never
    /// suspended by any policy.
    pub break_glass: Vec<Subject>,
    /// The bindings the policies' grants in force ask for, exactly.
    pub grants: Vec<Binding>,
    /// ServiceAccounts bound by a binding made after this moment (the compromise of an
    /// open incident) are suspended with the humans.
    pub service_accounts_since: Option<Timestamp>,
    /// The operator's own user name: it never suspends its own access.
    pub operator: Option<String>,
    /// The policy new entries are saved for.
    pub saver: String,
}

/// User names of the control plane's own components: bound by the bootstrap policy, never
/// by people. Matched exactly.
const CONTROL_PLANE_USERS: &[&str] = &[
    "system:kube-controller-manager",
    "system:kube-scheduler",
    "system:kube-proxy",
    "system:apiserver",
];

/// Groups of the control plane: the kubelets, and the group the API server authorises
/// without RBAC (binding it changes nothing, so suspending it would change nothing either).
const CONTROL_PLANE_GROUPS: &[&str] = &["system:nodes", "system:masters"];

/// The namespace and name of the ServiceAccount a user name stands for.
fn service_account_of(user: &str) -> Option<(&str, &str)> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains(':')).then_some((namespace, name))
}

/// A kubelet's user name: `system:node:<node name>`, a node name being a DNS subdomain.
fn is_node_user(user: &str) -> bool {
    user.strip_prefix("system:node:").is_some_and(|node| {
        !node.is_empty()
            && node
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    })
}

fn is_break_glass(subject: &RbacSubject, break_glass: &[Subject]) -> bool {
    break_glass
        .iter()
        .any(|b| match (b.kind, subject.kind.as_str()) {
            (SubjectKind::User, "User") | (SubjectKind::Group, "Group") => b.name == subject.name,
            (SubjectKind::ServiceAccount, "ServiceAccount") => {
                b.name == subject.name && b.namespace == subject.namespace
            }
            // A User named after a break-glass ServiceAccount is that ServiceAccount.
            (SubjectKind::ServiceAccount, "User") => {
                service_account_of(&subject.name).is_some_and(|(namespace, name)| {
                    b.name == name && b.namespace.as_deref() == Some(namespace)
                })
            }
            _ => false,
        })
}

fn is_operator(subject: &RbacSubject, operator: Option<&str>) -> bool {
    let Some(operator) = operator else {
        return false;
    };
    match subject.kind.as_str() {
        "User" => subject.name == operator,
        "ServiceAccount" => service_account_of(operator).is_some_and(|(namespace, name)| {
            subject.name == name && subject.namespace.as_deref() == Some(namespace)
        }),
        _ => false,
    }
}

/// Whether a lockdown suspends this subject of a binding created at `created`.
///
/// Every User and Group is suspended, `system:authenticated` and the ServiceAccount groups
/// included, except break-glass subjects, the operator itself and the control plane's own
/// identities matched exactly. A ServiceAccount keeps its access (life-critical workloads
/// run as ServiceAccounts), unless the binding was made after the compromise of an open
/// incident: then it may be the attacker's way back in.
pub fn is_suspended(subject: &RbacSubject, created: Option<Timestamp>, rules: &Rules) -> bool {
    if is_break_glass(subject, &rules.break_glass)
        || is_operator(subject, rules.operator.as_deref())
    {
        return false;
    }
    let service_account = match subject.kind.as_str() {
        "ServiceAccount" => true,
        "User" if service_account_of(&subject.name).is_some() => true,
        "User" => {
            return !(CONTROL_PLANE_USERS.contains(&subject.name.as_str())
                || is_node_user(&subject.name));
        }
        "Group" => return !CONTROL_PLANE_GROUPS.contains(&subject.name.as_str()),
        // An unknown kind grants nothing the API server recognises.
        _ => false,
    };
    service_account
        && match (rules.service_accounts_since, created) {
            (Some(since), Some(created)) => created > since,
            // Not knowing when it was made, it may be recent.
            (Some(_), None) => true,
            (None, _) => false,
        }
}

/// Whether a binding is exactly one a grant in force asks for. Its labels, which anyone
/// who can write the binding can copy, prove nothing; what it gives must be what the policy
/// gives.
pub fn is_grant(binding: &Binding, grants: &[Binding]) -> bool {
    grants
        .iter()
        .any(|grant| grant.binding == binding.binding && same_binding(binding, grant))
}

/// Whether a binding as it is already says what the wanted one says (ignoring what others
/// added: annotations, extra labels).
pub fn same_binding(current: &Binding, wanted: &Binding) -> bool {
    current.subjects == wanted.subjects
        && current.role_ref == wanted.role_ref
        && current.owner_references == wanted.owner_references
        && wanted
            .labels
            .iter()
            .all(|(k, v)| current.labels.get(k) == Some(v))
}

/// Whether a lockdown touches the binding at all.
pub fn is_suspendable(binding: &Binding, created: Option<Timestamp>, rules: &Rules) -> bool {
    !bootstrap::is_bootstrap(binding)
        && !is_grant(binding, &rules.grants)
        && binding
            .subjects
            .iter()
            .any(|s| is_suspended(s, created, rules))
}

/// One thing to do to a binding.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Save the binding in the ledger (before anything else touches it).
    Save(Entry),
    /// Delete the binding, if it is still the one with this uid: all its subjects are
    /// suspended.
    Delete(BindingRef, Option<String>),
    /// Keep the binding with only these subjects, if it is still at this resourceVersion.
    Reduce(BindingRef, Vec<RbacSubject>, Option<String>),
    /// Put the saved binding back exactly (create it, or replace what is there).
    Restore(Binding),
    /// Delete the ledger entry: the binding is back as saved.
    Forget(BindingRef),
}

/// How soon a binding is suspended: the most powerful first, so that cluster-admin is gone
/// before the many namespaced bindings are dealt with.
pub fn priority(binding: &Binding) -> u8 {
    match binding.binding.kind {
        BindingKind::ClusterRoleBinding
            if binding.role_ref.kind == "ClusterRole"
                && binding.role_ref.name == "cluster-admin" =>
        {
            0
        }
        BindingKind::ClusterRoleBinding => 1,
        BindingKind::RoleBinding => 2,
    }
}

/// Everything to do, as chains: the steps of one binding, in order. Chains are independent
/// of one another and come most powerful first.
pub fn plan(
    found: &[Found],
    ledger: &BTreeMap<BindingRef, Entry>,
    rules: &Rules,
    now: Timestamp,
) -> Vec<Vec<Step>> {
    let mut chains: Vec<(u8, Vec<Step>)> = Vec::new();
    let current: BTreeMap<&BindingRef, &Found> =
        found.iter().map(|f| (&f.binding.binding, f)).collect();
    if rules.active {
        for f in found {
            if !is_suspendable(&f.binding, f.created, rules) {
                continue;
            }
            let mut chain = Vec::new();
            // A binding already saved is not saved again: the first save is the one that
            // returns, so a binding an attacker recreated during the lockdown never does.
            let saved = ledger.get(&f.binding.binding);
            if saved.is_none() {
                let held = match (rules.since, f.created) {
                    (Some(since), Some(created)) => created > since,
                    _ => false,
                };
                chain.push(Step::Save(Entry {
                    binding: f.binding.clone(),
                    policy: rules.saver.clone(),
                    created: f.created,
                    suspended_at: now,
                    held,
                    release: false,
                }));
            }
            let created = saved.map_or(f.created, |s| s.created);
            let kept: Vec<RbacSubject> = f
                .binding
                .subjects
                .iter()
                .filter(|s| !is_suspended(s, created, rules))
                .cloned()
                .collect();
            chain.push(if kept.is_empty() {
                Step::Delete(f.binding.binding.clone(), f.uid.clone())
            } else {
                Step::Reduce(f.binding.binding.clone(), kept, f.resource_version.clone())
            });
            chains.push((priority(&f.binding), chain));
        }
    }
    for (binding, entry) in ledger {
        let back = if rules.active {
            // Its subjects became break-glass since it was saved: it comes back while the
            // lockdown goes on.
            !entry.held && !is_suspendable(&entry.binding, entry.created, rules)
        } else {
            !entry.held || entry.release
        };
        if !back {
            continue;
        }
        let mut chain = Vec::new();
        if current
            .get(binding)
            .is_none_or(|now| !now.binding.same_as(&entry.binding))
        {
            chain.push(Step::Restore(entry.binding.clone()));
        }
        chain.push(Step::Forget(binding.clone()));
        chains.push((3, chain));
    }
    chains.sort_by_key(|(priority, _)| *priority);
    chains.into_iter().map(|(_, chain)| chain).collect()
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

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn rules() -> Rules {
        Rules {
            active: true,
            since: Some(at("2026-06-01T00:00:00Z")),
            break_glass: vec![Subject {
                kind: SubjectKind::Group,
                name: "duty-officers".into(),
                namespace: None,
            }],
            grants: Vec::new(),
            service_accounts_since: None,
            operator: Some("system:serviceaccount:resurgo-system:resurgo".into()),
            saver: "p".into(),
        }
    }

    const BEFORE: &str = "2026-01-01T00:00:00Z";

    fn found(binding: Binding) -> Found {
        Found {
            uid: Some(format!("uid-{}", binding.binding.name)),
            resource_version: Some("1".into()),
            created: Some(at(BEFORE)),
            binding,
        }
    }

    #[test]
    fn every_human_path_is_suspended_but_break_glass_and_the_control_plane() {
        let r = rules();
        let old = Some(at(BEFORE));
        let suspended = |kind, name| is_suspended(&subject(kind, name), old, &r);
        assert!(suspended("User", "alice"));
        assert!(suspended("Group", "clinical-it"));
        assert!(!suspended("Group", "duty-officers"));
        // A user of the same name as a break-glass group is not break-glass.
        assert!(suspended("User", "duty-officers"));
        // `system:` is no pass: the groups that reach everyone or every ServiceAccount, and
        // names an attacker can pick, are suspended.
        assert!(suspended("Group", "system:authenticated"));
        assert!(suspended("Group", "system:unauthenticated"));
        assert!(suspended("Group", "system:serviceaccounts"));
        assert!(suspended("Group", "system:serviceaccounts:team-a"));
        assert!(suspended("User", "system:anything"));
        assert!(suspended("User", "system:node:"));
        assert!(suspended("User", "system:node:Evil/Name"));
        // The control plane's identities, exactly.
        assert!(!suspended("Group", "system:masters"));
        assert!(!suspended("Group", "system:nodes"));
        assert!(!suspended("User", "system:kube-scheduler"));
        assert!(!suspended("User", "system:kube-controller-manager"));
        assert!(!suspended("User", "system:node:worker-1.example"));
        // ServiceAccounts keep their access without a compromise to date them from.
        assert!(!suspended("ServiceAccount", "dispatch"));
        assert!(!suspended("User", "system:serviceaccount:ns:dispatch"));
        // The operator never suspends itself.
        let mut own = subject("ServiceAccount", "resurgo");
        own.namespace = Some("resurgo-system".into());
        assert!(!is_suspended(&own, old, &r));
        assert!(!suspended(
            "User",
            "system:serviceaccount:resurgo-system:resurgo"
        ));
    }

    #[test]
    fn service_account_bindings_made_after_the_compromise_are_suspended() {
        let r = Rules {
            service_accounts_since: Some(at("2026-05-01T00:00:00Z")),
            ..rules()
        };
        let sa = subject("ServiceAccount", "backdoor");
        assert!(!is_suspended(&sa, Some(at("2026-04-30T23:59:59Z")), &r));
        assert!(is_suspended(&sa, Some(at("2026-05-01T00:00:01Z")), &r));
        assert!(is_suspended(
            &subject("User", "system:serviceaccount:ns:backdoor"),
            Some(at("2026-05-02T00:00:00Z")),
            &r
        ));
        // Break-glass ServiceAccounts and the operator stay, however new their binding.
        let r = Rules {
            break_glass: vec![Subject {
                kind: SubjectKind::ServiceAccount,
                name: "dispatch".into(),
                namespace: Some("ns".into()),
            }],
            ..r
        };
        assert!(!is_suspended(
            &subject("ServiceAccount", "dispatch"),
            Some(at("2026-05-02T00:00:00Z")),
            &r
        ));
    }

    #[test]
    fn a_grant_is_what_a_policy_asks_for_not_what_its_labels_say() {
        let mut grant = binding("resurgo.grant.p.g", vec![subject("User", "alice")]);
        grant
            .labels
            .insert("resurgo.dev/access-policy".into(), "p".into());
        grant
            .labels
            .insert("app.kubernetes.io/managed-by".into(), "resurgo".into());
        let r = Rules {
            grants: vec![grant.clone()],
            ..rules()
        };
        assert!(!is_suspendable(&grant, Some(at(BEFORE)), &r));
        // The same labels on a binding no policy asks for: an ordinary human binding.
        let mut forged = grant.clone();
        forged.binding.name = "looks-like-a-grant".into();
        assert!(is_suspendable(&forged, Some(at(BEFORE)), &r));
        // The grant's name with one more subject: not the grant.
        let mut widened = grant.clone();
        widened.subjects.push(subject("User", "mallory"));
        assert!(is_suspendable(&widened, Some(at(BEFORE)), &r));
        // Another role under the grant's name: not the grant.
        let mut other_role = grant;
        other_role.role_ref.name = "admin".into();
        assert!(is_suspendable(&other_role, Some(at(BEFORE)), &r));
    }

    #[test]
    fn a_binding_is_saved_before_it_is_deleted_or_reduced_most_powerful_first() {
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
        let mut admin = binding("admins", vec![subject("Group", "platform")]);
        admin.binding = BindingRef {
            kind: BindingKind::ClusterRoleBinding,
            namespace: None,
            name: "admins".into(),
        };
        admin.role_ref.name = "cluster-admin".into();
        let now = at("2026-06-02T00:00:00Z");
        let chains = plan(
            &[
                found(human.clone()),
                found(mixed.clone()),
                found(robots),
                found(admin.clone()),
            ],
            &BTreeMap::new(),
            &rules(),
            now,
        );
        let entry = |b: &Binding| {
            Step::Save(Entry {
                binding: b.clone(),
                policy: "p".into(),
                created: Some(at(BEFORE)),
                suspended_at: now,
                held: false,
                release: false,
            })
        };
        assert_eq!(
            chains,
            vec![
                vec![
                    entry(&admin),
                    Step::Delete(admin.binding.clone(), Some("uid-admins".into()))
                ],
                vec![
                    entry(&human),
                    Step::Delete(human.binding.clone(), Some("uid-human".into()))
                ],
                vec![
                    entry(&mixed),
                    Step::Reduce(
                        mixed.binding.clone(),
                        vec![
                            subject("ServiceAccount", "dispatch"),
                            subject("Group", "duty-officers")
                        ],
                        Some("1".into())
                    )
                ],
            ]
        );
    }

    #[test]
    fn the_first_save_wins() {
        let original = binding("b", vec![subject("User", "alice")]);
        let recreated = binding("b", vec![subject("User", "mallory")]);
        let entry = Entry {
            binding: original.clone(),
            policy: "p".into(),
            created: Some(at(BEFORE)),
            suspended_at: at("2026-06-01T00:00:00Z"),
            held: false,
            release: false,
        };
        let ledger = BTreeMap::from([(original.binding.clone(), entry)]);
        let now = at("2026-06-02T00:00:00Z");
        assert_eq!(
            plan(&[found(recreated.clone())], &ledger, &rules(), now),
            vec![vec![Step::Delete(
                original.binding.clone(),
                Some("uid-b".into())
            )]]
        );
        // Ending the lockdown brings the original back, not the attacker's.
        let lifted = Rules {
            active: false,
            ..rules()
        };
        assert_eq!(
            plan(&[], &ledger, &lifted, now),
            vec![vec![
                Step::Restore(original.clone()),
                Step::Forget(original.binding)
            ]]
        );
    }

    #[test]
    fn a_binding_made_during_the_lockdown_stays_suspended_after_it() {
        let late = Found {
            created: Some(at("2026-06-01T00:00:05Z")),
            ..found(binding("late", vec![subject("User", "mallory")]))
        };
        let now = at("2026-06-02T00:00:00Z");
        let chains = plan(std::slice::from_ref(&late), &BTreeMap::new(), &rules(), now);
        let Step::Save(entry) = &chains[0][0] else {
            panic!("saved first: {chains:?}")
        };
        assert!(entry.held);
        let ledger = BTreeMap::from([(late.binding.binding.clone(), entry.clone())]);
        let lifted = Rules {
            active: false,
            ..rules()
        };
        assert!(plan(&[], &ledger, &lifted, now).is_empty());
        // Released by a cluster admin: it comes back once no lockdown is in force.
        let mut released = entry.clone();
        released.release = true;
        let ledger = BTreeMap::from([(late.binding.binding.clone(), released)]);
        assert!(plan(&[], &ledger, &rules(), now).is_empty());
        assert_eq!(plan(&[], &ledger, &lifted, now).len(), 1);
    }

    #[test]
    fn a_subject_made_break_glass_during_the_lockdown_gets_its_binding_back() {
        let nurse = binding("nurse", vec![subject("User", "nurse")]);
        let both = binding(
            "both",
            vec![subject("User", "nurse"), subject("User", "porter")],
        );
        let entry = |b: &Binding| Entry {
            binding: b.clone(),
            policy: "p".into(),
            created: Some(at(BEFORE)),
            suspended_at: at("2026-06-01T00:00:00Z"),
            held: false,
            release: false,
        };
        let ledger = BTreeMap::from([
            (nurse.binding.clone(), entry(&nurse)),
            (both.binding.clone(), entry(&both)),
        ]);
        let now = at("2026-06-02T00:00:00Z");
        assert!(plan(&[], &ledger, &rules(), now).is_empty());
        let mut now_break_glass = rules();
        now_break_glass.break_glass.push(Subject {
            kind: SubjectKind::User,
            name: "nurse".into(),
            namespace: None,
        });
        // Only the binding all of whose suspended subjects are now break-glass comes back.
        assert_eq!(
            plan(&[], &ledger, &now_break_glass, now),
            vec![vec![
                Step::Restore(nurse.clone()),
                Step::Forget(nurse.binding)
            ]]
        );
    }

    /// The cluster as the steps see it: bindings and the ledger.
    #[derive(Clone, Debug, Default, PartialEq)]
    struct World {
        bindings: BTreeMap<BindingRef, Binding>,
        ledger: BTreeMap<BindingRef, Entry>,
    }

    impl World {
        fn apply(&mut self, step: &Step) {
            match step {
                Step::Save(e) => {
                    // Creating an entry that exists fails with AlreadyExists: the first stays.
                    self.ledger
                        .entry(e.binding.binding.clone())
                        .or_insert(e.clone());
                }
                Step::Delete(r, _) => {
                    self.bindings.remove(r);
                }
                Step::Reduce(r, subjects, _) => {
                    if let Some(b) = self.bindings.get_mut(r) {
                        b.subjects = subjects.clone();
                    }
                }
                Step::Restore(b) => {
                    self.bindings.insert(b.binding.clone(), b.clone());
                }
                Step::Forget(r) => {
                    self.ledger.remove(r);
                }
            }
        }

        fn steps(&self, rules: &Rules) -> Vec<Step> {
            let found: Vec<Found> = self.bindings.values().cloned().map(found).collect();
            plan(&found, &self.ledger, rules, at("2026-06-02T00:00:00Z"))
                .into_iter()
                .flatten()
                .collect()
        }

        /// Nothing lost: every original binding is either there unchanged or saved exactly.
        fn keeps(&self, originals: &[Binding]) -> bool {
            originals.iter().all(|o| {
                self.bindings.get(&o.binding) == Some(o)
                    || self.ledger.get(&o.binding).map(|e| &e.binding) == Some(o)
            })
        }
    }

    /// Runs the plan from `world`, stopping after `crash_after` steps (the operator killed),
    /// then plans again from what is left and runs to the end, as the restarted operator
    /// would.
    fn run_with_crash(world: &mut World, rules: &Rules, crash_after: usize, originals: &[Binding]) {
        for step in world.steps(rules).iter().take(crash_after) {
            world.apply(step);
            assert!(world.keeps(originals), "lost a binding after {step:?}");
        }
        for _ in 0..3 {
            let steps = world.steps(rules);
            if steps.is_empty() {
                return;
            }
            for step in &steps {
                world.apply(step);
                assert!(world.keeps(originals), "lost a binding after {step:?}");
            }
        }
        panic!("did not converge: still {:?}", world.steps(rules));
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
            ledger: BTreeMap::new(),
        };
        let locked_rules = rules();
        let lifted_rules = Rules {
            active: false,
            ..rules()
        };
        let suspend_len = start.steps(&locked_rules).len();
        assert_eq!(
            suspend_len, 6,
            "three bindings saved, then deleted or reduced"
        );
        for crash in 0..=suspend_len {
            let mut world = start.clone();
            run_with_crash(&mut world, &locked_rules, crash, &originals);
            // Locked down: no suspended subject is bound any more, everything else is.
            for b in world.bindings.values() {
                assert!(
                    !is_suspendable(b, Some(at(BEFORE)), &locked_rules),
                    "{b:?} still suspendable"
                );
            }
            assert_eq!(world.ledger.len(), 3);
            assert!(world.bindings.contains_key(&originals[3].binding));
            assert_eq!(world.bindings[&originals[4].binding], originals[4]);

            let locked = world.clone();
            let restore_len = locked.steps(&lifted_rules).len();
            for crash in 0..=restore_len {
                let mut world = locked.clone();
                run_with_crash(&mut world, &lifted_rules, crash, &originals);
                assert_eq!(world, start, "crash after {crash} restore steps");
            }
        }
    }
}
