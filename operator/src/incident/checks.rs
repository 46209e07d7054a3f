//! What each step of an incident finds, decided from what the controller read: the named
//! AccessPolicies, the BackupSchedules, the plans and a drill's copies. Pure: the controller
//! does the reading and the acting.

use std::{collections::BTreeMap, time::Duration as StdDuration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;

use super::{
    drill,
    timeline::{Outcome, Step},
    tokens::{self, Reissue},
};
use crate::api::{
    access_policy::{AccessMode, AccessPolicy},
    backup_schedule::BackupSchedule,
    common::Duration,
    incident::{ChosenRestorePoint, Incident, IncidentStatus, ReissuedServiceAccount, TierResult},
    recovery_plan::{PlanPhase, RecoveryPlan, RegeneratedSecret, RtoResult},
};

/// What the controller read for one reconcile of an incident.
#[derive(Default)]
pub struct Observed {
    /// The AccessPolicies the incident names, by name (absent ones are missing).
    pub policies: BTreeMap<String, AccessPolicy>,
    /// Every other Real incident that is still open.
    pub others_open: Vec<Incident>,
    pub schedules: Vec<BackupSchedule>,
    /// The RecoveryPlans the incident names, by name (absent ones are missing).
    pub plans: BTreeMap<String, RecoveryPlan>,
    /// A drill's copies, by the name of the plan they copy.
    pub copies: BTreeMap<String, RecoveryPlan>,
    /// Names of a drill's namespace copies that still exist, with whether their deletion
    /// has begun.
    pub copy_namespaces: BTreeMap<String, bool>,
    /// Restore points, when the step choosing them is due.
    pub restore_points: Option<Vec<ChosenRestorePoint>>,
    /// Credentials the plans regenerate that are older than the compromise (or missing),
    /// when the step rotating them is due.
    pub stale_secrets: Option<Vec<SecretToRotate>>,
    /// The ServiceAccounts of the namespaces the incident names, when the step
    /// invalidating their tokens is due.
    pub tokens: Option<tokens::Seen>,
}

/// A credential to rotate.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretToRotate {
    pub plan: String,
    pub service: String,
    pub namespace: String,
    pub secret: RegeneratedSecret,
    /// Why the Secret there cannot be given fresh values in place, if so.
    pub refused: Option<String>,
}

/// What the controller must do before a step can finish.
#[derive(Clone, Debug)]
pub enum Act {
    /// Create (by server-side apply) these drill copies.
    CreateCopies(Vec<RecoveryPlan>),
    /// Delete a drill's copies and their namespaces.
    DeleteCopies {
        plans: Vec<String>,
        namespaces: Vec<String>,
    },
    /// Give these credentials fresh values.
    Rotate(Vec<SecretToRotate>),
    /// Record these ServiceAccounts in the status before anything is deleted.
    RecordServiceAccounts(Vec<ReissuedServiceAccount>),
    /// Delete and create again these ServiceAccounts, and delete their legacy tokens.
    Reissue(Vec<Reissue>),
}

impl PartialEq for Act {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            // Kubernetes objects compare by what the operator sets: name, labels and spec.
            (Act::CreateCopies(a), Act::CreateCopies(b)) => {
                a.len() == b.len()
                    && a.iter().zip(b).all(|(a, b)| {
                        a.metadata.name == b.metadata.name
                            && a.metadata.labels == b.metadata.labels
                            && a.spec == b.spec
                    })
            }
            (
                Act::DeleteCopies { plans, namespaces },
                Act::DeleteCopies {
                    plans: other_plans,
                    namespaces: other_namespaces,
                },
            ) => plans == other_plans && namespaces == other_namespaces,
            (Act::Rotate(a), Act::Rotate(b)) => a == b,
            (Act::RecordServiceAccounts(a), Act::RecordServiceAccounts(b)) => a == b,
            (Act::Reissue(a), Act::Reissue(b)) => a == b,
            _ => false,
        }
    }
}

/// The outcome of `step` for `incident`.
pub fn check(
    step: Step,
    incident: &Incident,
    status: &IncidentStatus,
    observed: &Observed,
) -> Outcome<Act> {
    match step {
        Step::Lockdown => lockdown(incident, observed),
        Step::InvalidateServiceAccountTokens => {
            match (
                &incident.spec.invalidate_service_account_tokens,
                &observed.tokens,
            ) {
                (None, _) => Outcome::Done("no namespaces named".into()),
                (Some(_), None) => Outcome::Waiting("reading ServiceAccounts".into()),
                (Some(wanted), Some(seen)) => {
                    tokens::invalidate(wanted, &status.reissued_service_accounts, seen)
                }
            }
        }
        Step::FreezePruning => freeze_pruning(observed),
        Step::ChooseRestorePoints => choose_restore_points(incident, observed),
        Step::Recover if incident.spec.mode == crate::api::incident::IncidentMode::Drill => {
            drill_recover(incident, status, observed)
        }
        Step::Recover => recover(incident, observed),
        Step::RotateCredentials => rotate(incident, observed),
        Step::CleanUp => clean_up(observed),
        Step::LiftLockdown => lift_lockdown(incident, observed),
        Step::UnfreezePruning => unfreeze_pruning(incident, observed),
    }
}

fn missing<'a>(names: &'a [String], found: &BTreeMap<String, impl Sized>) -> Option<&'a String> {
    names.iter().find(|n| !found.contains_key(*n))
}

/// The end of the message of a step that waits for an object the incident names and that
/// does not exist: the incident reports it as Stalled (see [`blocked`]).
const NOT_FOUND: &str = "does not exist";

/// Why a step waits for an object named in `field` (such as `spec.recoveryPlans`).
fn not_found(field: &str, kind: &str, name: &str) -> String {
    format!("{field}: {kind} {name} {NOT_FOUND}")
}

/// What a waiting step's message says blocks it until a user acts: the incident is then
/// Stalled, while the step still waits and goes on by itself once the cause is fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// An object the incident names does not exist.
    ReferenceNotFound,
    /// An AccessPolicy the step waits on is Stalled: its mode cannot change until its
    /// spec is corrected.
    AccessPolicyStalled,
}

impl Blocked {
    /// The reason of the incident's Stalled condition.
    pub fn reason(self) -> &'static str {
        match self {
            Blocked::ReferenceNotFound => "ReferenceNotFound",
            Blocked::AccessPolicyStalled => "AccessPolicyStalled",
        }
    }
}

/// What blocks the step whose message is `message`, if anything but time.
pub fn blocked(message: &str) -> Option<Blocked> {
    // Checked first: a policy's own message, quoted at the end, may end like NOT_FOUND.
    if names_a_stalled_policy(message) {
        Some(Blocked::AccessPolicyStalled)
    } else if message.ends_with(NOT_FOUND) {
        Some(Blocked::ReferenceNotFound)
    } else {
        None
    }
}

/// The words after `accesspolicy NAME ` in the message of a step that waits on a Stalled
/// policy (see [`stalled_policies`]).
const STALLED: &str = "is Stalled and cannot ";

fn names_a_stalled_policy(message: &str) -> bool {
    // Policy names are DNS labels, so the first space ends the name.
    message
        .strip_prefix("accesspolicy ")
        .and_then(|rest| rest.split_once(' '))
        .is_some_and(|(_, rest)| rest.starts_with(STALLED))
}

/// The Stalled=True condition of `policy`, unless it describes an older generation than
/// the spec (the policy's controller has not yet judged a correction).
fn stalled_condition(policy: &AccessPolicy) -> Option<&Condition> {
    let condition = policy
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled" && c.status == "True")?;
    let stale = matches!(
        (condition.observed_generation, policy.metadata.generation),
        (Some(observed), Some(current)) if observed < current
    );
    (!stale).then_some(condition)
}

/// Why a step waits for ever on the named policies that are Stalled: each one's name and
/// its own reason and message, so that whoever reads the incident knows what to fix.
/// `change` is what the step waits for, such as `leave Lockdown`. None when none is.
fn stalled_policies<'a>(
    names: impl Iterator<Item = &'a str>,
    observed: &Observed,
    change: &str,
) -> Option<String> {
    let stalled: Vec<String> = names
        .filter_map(|name| {
            let condition = stalled_condition(observed.policies.get(name)?)?;
            Some(format!(
                "accesspolicy {name} {STALLED}{change} until its spec is corrected: {}: {}",
                condition.reason, condition.message
            ))
        })
        .collect();
    (!stalled.is_empty()).then(|| stalled.join("; "))
}

fn lockdown(incident: &Incident, observed: &Observed) -> Outcome<Act> {
    let names = &incident.spec.access_policies;
    if names.is_empty() {
        return Outcome::Done("no AccessPolicies named".into());
    }
    if let Some(name) = missing(names, &observed.policies) {
        return Outcome::Waiting(not_found("spec.accessPolicies", "accesspolicy", name));
    }
    let waiting: Vec<&str> = names
        .iter()
        .filter(|n| mode_of(&observed.policies[*n]) != Some(AccessMode::Lockdown))
        .map(String::as_str)
        .collect();
    if !waiting.is_empty() {
        if let Some(why) = stalled_policies(waiting.iter().copied(), observed, "reach Lockdown") {
            return Outcome::Waiting(why);
        }
        return Outcome::Waiting(format!(
            "waiting for {} to report Lockdown",
            waiting.join(", ")
        ));
    }
    let suspended: u32 = names
        .iter()
        .filter_map(|n| observed.policies[n].status.as_ref())
        .map(|s| s.suspended_bindings)
        .sum();
    Outcome::Done(format!(
        "{} in Lockdown; {suspended} human bindings suspended and saved",
        names.join(", ")
    ))
}

fn mode_of(policy: &AccessPolicy) -> Option<AccessMode> {
    policy.status.as_ref().and_then(|s| s.mode)
}

fn freeze_pruning(observed: &Observed) -> Outcome<Act> {
    if observed.schedules.is_empty() {
        return Outcome::Done("no BackupSchedules: nothing to freeze".into());
    }
    let active: Vec<String> = observed
        .schedules
        .iter()
        .filter(|s| !s.status.as_ref().is_some_and(|s| s.pruning_frozen))
        .map(ResourceExt::name_any)
        .collect();
    if active.is_empty() {
        Outcome::Done(format!(
            "pruning frozen on {} BackupSchedules",
            observed.schedules.len()
        ))
    } else {
        Outcome::Waiting(format!(
            "waiting for backupschedule {} to report pruning frozen",
            active.join(", ")
        ))
    }
}

fn choose_restore_points(incident: &Incident, observed: &Observed) -> Outcome<Act> {
    if let Some(name) = missing(&incident.spec.recovery_plans, &observed.plans) {
        return Outcome::Waiting(not_found("spec.recoveryPlans", "recoveryplan", name));
    }
    let Some(points) = &observed.restore_points else {
        return Outcome::Waiting("reading backups".into());
    };
    if points.is_empty() {
        return Outcome::Done("no service restores from a backup".into());
    }
    let unrestorable: Vec<String> = points
        .iter()
        .filter(|p| p.backup.is_none())
        .map(|p| {
            format!(
                "{}/{}: {}",
                p.plan,
                p.service,
                p.message.as_deref().unwrap_or("no backup")
            )
        })
        .collect();
    if !unrestorable.is_empty() {
        return Outcome::Failed(format!("no restore point for {}", unrestorable.join("; ")));
    }
    let widest = points
        .iter()
        .filter_map(|p| {
            let window = p.data_loss_window.as_deref()?;
            Some((Duration::from(window).to_std().ok()?, p))
        })
        .max_by_key(|(window, _)| *window);
    let mut message = format!("{} restore points chosen", points.len());
    if let Some((window, point)) = widest {
        message.push_str(&format!(
            "; widest data-loss window {} ({}/{})",
            Duration::from(window),
            point.plan,
            point.service
        ));
    }
    Outcome::Done(message)
}

/// `a 7/11 (tier clinical)` for one plan.
fn progress(plan: &RecoveryPlan) -> String {
    let status = plan.status.clone().unwrap_or_default();
    format!(
        "{} {}{}",
        plan.name_any(),
        status.ready.as_deref().unwrap_or("0/?"),
        status
            .current_tier
            .map(|t| format!(" (tier {t})"))
            .unwrap_or_default()
    )
}

fn phase_of(plan: &RecoveryPlan) -> Option<PlanPhase> {
    plan.status.as_ref().and_then(|s| s.phase)
}

/// Finished plans: done when all are, failed when one failed or was degraded.
fn plans_outcome<'a>(plans: impl Iterator<Item = &'a RecoveryPlan> + Clone) -> Outcome<Act> {
    let stalled = |plan: &RecoveryPlan| {
        plan.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Stalled"))
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    let failed: Vec<String> = plans
        .clone()
        .filter(|p| matches!(phase_of(p), Some(PlanPhase::Failed | PlanPhase::Degraded)))
        .map(|p| {
            format!(
                "recoveryplan {} {:?}: {}",
                p.name_any(),
                phase_of(p).unwrap(),
                stalled(p)
            )
        })
        .collect();
    let all_recovered = plans
        .clone()
        .all(|p| phase_of(p) == Some(PlanPhase::Recovered));
    let summary = plans.map(progress).collect::<Vec<_>>().join(", ");
    if !failed.is_empty() {
        Outcome::Failed(failed.join("; "))
    } else if all_recovered {
        Outcome::Done(format!("recovered: {summary}"))
    } else {
        Outcome::Waiting(format!("recovering: {summary}"))
    }
}

fn recover(incident: &Incident, observed: &Observed) -> Outcome<Act> {
    if let Some(name) = missing(&incident.spec.recovery_plans, &observed.plans) {
        return Outcome::Waiting(not_found("spec.recoveryPlans", "recoveryplan", name));
    }
    if incident.spec.recovery_plans.is_empty() {
        return Outcome::Done("no RecoveryPlans named".into());
    }
    plans_outcome(
        incident
            .spec
            .recovery_plans
            .iter()
            .map(|n| &observed.plans[n]),
    )
}

fn drill_recover(
    incident: &Incident,
    status: &IncidentStatus,
    observed: &Observed,
) -> Outcome<Act> {
    if let Some(name) = missing(&incident.spec.recovery_plans, &observed.plans) {
        return Outcome::Waiting(not_found("spec.recoveryPlans", "recoveryplan", name));
    }
    let prefix = drill_prefix(incident);
    let mut to_create = Vec::new();
    for name in &incident.spec.recovery_plans {
        match observed.copies.get(name) {
            Some(copy) => {
                let ours = copy.labels().get(crate::labels::INCIDENT) == Some(&incident.name_any());
                if !ours {
                    return Outcome::Failed(format!(
                        "recoveryplan {} exists and belongs to another drill: choose another drill.namespacePrefix",
                        copy.name_any()
                    ));
                }
            }
            None => match drill::copy(
                &observed.plans[name],
                incident,
                &prefix,
                &status.restore_points,
            ) {
                Ok(copy) => to_create.push(copy),
                Err(error) => return Outcome::Failed(error.to_string()),
            },
        }
    }
    if !to_create.is_empty() {
        let names: Vec<String> = to_create.iter().map(ResourceExt::name_any).collect();
        let left_out: Vec<String> = incident
            .spec
            .recovery_plans
            .iter()
            .flat_map(|n| drill::left_out(&observed.plans[n]))
            .collect();
        let mut message = format!("rebuilding isolated copies: {}", names.join(", "));
        if !left_out.is_empty() {
            message.push_str(&format!(
                "; verified in place in a real recovery, not drilled: {}",
                left_out.join(", ")
            ));
        }
        return Outcome::Act(Act::CreateCopies(to_create), message);
    }
    plans_outcome(
        incident
            .spec
            .recovery_plans
            .iter()
            .map(|n| &observed.copies[n]),
    )
}

/// The namespace prefix of a drill.
pub fn drill_prefix(incident: &Incident) -> String {
    incident
        .spec
        .drill
        .as_ref()
        .map_or_else(|| "drill-".to_owned(), |d| d.namespace_prefix.clone())
}

fn rotate(incident: &Incident, observed: &Observed) -> Outcome<Act> {
    if !incident.spec.rotate_credentials {
        return Outcome::Done("skipped: rotateCredentials is false".into());
    }
    let Some(stale) = &observed.stale_secrets else {
        return Outcome::Waiting("reading credentials".into());
    };
    if stale.is_empty() {
        let listed: usize = observed
            .plans
            .values()
            .flat_map(|p| &p.spec.services)
            .map(|s| s.regenerate_secrets.len())
            .sum();
        return Outcome::Done(format!(
            "all {listed} credentials the plans list were regenerated by the operator after compromisedSince"
        ));
    }
    let refused: Vec<String> = stale
        .iter()
        .filter_map(|s| {
            let why = s.refused.as_deref()?;
            Some(format!("Secret {}/{} {why}", s.namespace, s.secret.name))
        })
        .collect();
    if !refused.is_empty() {
        return Outcome::Failed(refused.join("; "));
    }
    let names: Vec<String> = stale
        .iter()
        .map(|s| format!("{}/{}", s.namespace, s.secret.name))
        .collect();
    Outcome::Act(
        Act::Rotate(stale.clone()),
        format!("rotating {}", names.join(", ")),
    )
}

fn clean_up(observed: &Observed) -> Outcome<Act> {
    let plans: Vec<String> = observed
        .copies
        .values()
        .map(ResourceExt::name_any)
        .collect();
    let namespaces: Vec<String> = observed
        .copy_namespaces
        .iter()
        .filter(|(_, deleting)| !**deleting)
        .map(|(name, _)| name.clone())
        .collect();
    if !plans.is_empty() || !namespaces.is_empty() {
        let message = format!(
            "deleting {} drill copies and {} namespaces",
            plans.len(),
            namespaces.len()
        );
        return Outcome::Act(Act::DeleteCopies { plans, namespaces }, message);
    }
    if !observed.copy_namespaces.is_empty() {
        let names: Vec<&str> = observed
            .copy_namespaces
            .keys()
            .map(String::as_str)
            .collect();
        return Outcome::Waiting(format!("waiting for namespaces {} to go", names.join(", ")));
    }
    Outcome::Done("every copy the drill made is deleted".into())
}

/// Whether another open Real incident names `policy`.
fn held_by_other<'a>(observed: &'a Observed, policy: &str) -> Option<&'a Incident> {
    observed
        .others_open
        .iter()
        .find(|i| i.spec.access_policies.iter().any(|p| p == policy))
}

fn lift_lockdown(incident: &Incident, observed: &Observed) -> Outcome<Act> {
    let mut kept = Vec::new();
    let mut locked = Vec::new();
    for name in &incident.spec.access_policies {
        let Some(policy) = observed.policies.get(name) else {
            continue;
        };
        if let Some(other) = held_by_other(observed, name) {
            kept.push(format!("{name} (incident {} is open)", other.name_any()));
            continue;
        }
        if policy.spec.mode == AccessMode::Lockdown {
            kept.push(format!("{name} (its own mode is Lockdown)"));
            continue;
        }
        if mode_of(policy) == Some(AccessMode::Lockdown) {
            locked.push(name);
        }
    }
    if let Some(why) = stalled_policies(
        locked.iter().map(|n| n.as_str()),
        observed,
        "leave Lockdown",
    ) {
        return Outcome::Waiting(why);
    }
    if let Some(name) = locked.first() {
        return Outcome::Waiting(format!("waiting for accesspolicy {name} to leave Lockdown"));
    }
    let mut message = "access restored".to_owned();
    if !kept.is_empty() {
        message.push_str(&format!("; still locked: {}", kept.join(", ")));
    }
    Outcome::Done(message)
}

fn unfreeze_pruning(incident: &Incident, observed: &Observed) -> Outcome<Act> {
    if let Some(other) = observed.others_open.first() {
        return Outcome::Done(format!(
            "pruning stays frozen while incident {} is open",
            other.name_any()
        ));
    }
    let _ = incident;
    let frozen: Vec<String> = observed
        .schedules
        .iter()
        .filter(|s| s.status.as_ref().is_some_and(|s| s.pruning_frozen))
        .map(ResourceExt::name_any)
        .collect();
    if frozen.is_empty() {
        Outcome::Done("pruning runs again".into())
    } else {
        Outcome::Waiting(format!(
            "waiting for backupschedule {} to resume pruning",
            frozen.join(", ")
        ))
    }
}

/// Time to ready per tier of `plans` (the real plans or a drill's copies, keyed by the plan
/// they stand for), from the start of each plan's recovery.
pub fn tier_results<'a>(
    plans: impl Iterator<Item = (&'a String, &'a RecoveryPlan)>,
) -> Vec<TierResult> {
    let mut results = Vec::new();
    for (name, plan) in plans {
        let Some(status) = &plan.status else { continue };
        let start = status
            .services
            .iter()
            .filter_map(|s| s.started.as_ref().map(|t| t.0))
            .min();
        for tier in &status.tiers {
            let time_to_ready = match (start, &tier.ready) {
                (Some(start), Some(ready)) => {
                    StdDuration::try_from(ready.0.duration_since(start)).ok()
                }
                _ => None,
            };
            results.push(TierResult {
                plan: name.clone(),
                tier: tier.name.clone(),
                rto_target: tier.rto_target.clone(),
                time_to_ready: time_to_ready.map(|d| Duration::from(d).to_string()),
                met: match tier.rto {
                    RtoResult::Met => Some(true),
                    RtoResult::Breached => Some(false),
                    RtoResult::Pending => None,
                },
            });
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::{access_policy::AccessPolicyStatus, backup_schedule::BackupScheduleStatus};

    fn incident(yaml: &str) -> Incident {
        crate::yaml::from_str(&format!(
            "apiVersion: resurgo.dev/v1alpha1\nkind: Incident\nmetadata: {{name: ransomware}}\nspec:\n  compromisedSince: '2021-07-31T00:00:00Z'\n{yaml}"
        ))
        .expect("an incident")
    }

    fn policy(name: &str, spec_mode: &str, status_mode: Option<AccessMode>) -> AccessPolicy {
        let mut policy: AccessPolicy = crate::yaml::from_str(&format!(
            "apiVersion: resurgo.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: {name}}}\nspec: {{mode: {spec_mode}}}\n"
        ))
        .expect("a policy");
        policy.status = Some(AccessPolicyStatus {
            mode: status_mode,
            suspended_bindings: 4,
            ..Default::default()
        });
        policy
    }

    fn schedule(name: &str, frozen: bool) -> BackupSchedule {
        let mut schedule: BackupSchedule = crate::yaml::from_str(&format!(
            r#"
apiVersion: resurgo.dev/v1alpha1
kind: BackupSchedule
metadata: {{name: {name}}}
spec:
  schedule: "0 3 * * *"
  store: local
  include: {{namespaces: [a]}}
  encryption: {{recipients: [age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq]}}
  retention: {{keepLast: 3}}
"#
        ))
        .expect("a schedule");
        schedule.status = Some(BackupScheduleStatus {
            pruning_frozen: frozen,
            ..Default::default()
        });
        schedule
    }

    #[test]
    fn lockdown_is_done_only_when_every_policy_reports_it() {
        let incident = incident("  accessPolicies: [staff, remote]\n");
        let mut observed = Observed::default();
        assert_eq!(
            lockdown(&incident, &observed),
            Outcome::Waiting("spec.accessPolicies: accesspolicy staff does not exist".into())
        );
        observed.policies.insert(
            "staff".into(),
            policy("staff", "Normal", Some(AccessMode::Lockdown)),
        );
        observed.policies.insert(
            "remote".into(),
            policy("remote", "Normal", Some(AccessMode::Normal)),
        );
        assert_eq!(
            lockdown(&incident, &observed),
            Outcome::Waiting("waiting for remote to report Lockdown".into())
        );
        observed.policies.insert(
            "remote".into(),
            policy("remote", "Normal", Some(AccessMode::Lockdown)),
        );
        assert_eq!(
            lockdown(&incident, &observed),
            Outcome::Done("staff, remote in Lockdown; 8 human bindings suspended and saved".into())
        );
    }

    #[test]
    fn pruning_must_be_frozen_everywhere() {
        let mut observed = Observed {
            schedules: vec![schedule("a", true), schedule("b", false)],
            ..Default::default()
        };
        assert_eq!(
            freeze_pruning(&observed),
            Outcome::Waiting("waiting for backupschedule b to report pruning frozen".into())
        );
        observed.schedules[1] = schedule("b", true);
        assert_eq!(
            freeze_pruning(&observed),
            Outcome::Done("pruning frozen on 2 BackupSchedules".into())
        );
    }

    #[test]
    fn lifting_waits_for_the_policy_unless_another_incident_holds_it() {
        let incident = incident("  state: Closed\n  accessPolicies: [staff]\n");
        let mut observed = Observed::default();
        observed.policies.insert(
            "staff".into(),
            policy("staff", "Normal", Some(AccessMode::Lockdown)),
        );
        assert_eq!(
            lift_lockdown(&incident, &observed),
            Outcome::Waiting("waiting for accesspolicy staff to leave Lockdown".into())
        );
        let mut other = incident.clone();
        other.metadata.name = Some("second-attack".into());
        observed.others_open.push(other);
        assert_eq!(
            lift_lockdown(&incident, &observed),
            Outcome::Done(
                "access restored; still locked: staff (incident second-attack is open)".into()
            )
        );
        assert_eq!(
            unfreeze_pruning(&incident, &observed),
            Outcome::Done("pruning stays frozen while incident second-attack is open".into())
        );
    }

    /// `policy` with the condition the access controller writes when the API server
    /// refuses what the policy renders.
    fn stalled(mut policy: AccessPolicy, observed_generation: i64) -> AccessPolicy {
        policy.metadata.generation = Some(2);
        policy.status.as_mut().unwrap().conditions.push(Condition {
            type_: "Stalled".into(),
            status: "True".into(),
            reason: "ApplyFailed".into(),
            message: "NetworkPolicy resurgo.remote.staff.vpn: spec.ingress[0].ports[0].port: must be between 1 and 65535".into(),
            observed_generation: Some(observed_generation),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::from_second(1_000).unwrap()),
        });
        policy
    }

    #[test]
    fn a_closed_incident_says_which_stalled_policy_keeps_the_lockdown_and_why() {
        let incident = incident("  state: Closed\n  accessPolicies: [remote, staff]\n");
        let mut observed = Observed::default();
        observed.policies.insert(
            "remote".into(),
            policy("remote", "Normal", Some(AccessMode::Lockdown)),
        );
        observed.policies.insert(
            "staff".into(),
            stalled(policy("staff", "Normal", Some(AccessMode::Lockdown)), 2),
        );
        let Outcome::Waiting(message) = lift_lockdown(&incident, &observed) else {
            panic!("lifting must wait while the policy is Stalled");
        };
        assert_eq!(
            message,
            "accesspolicy staff is Stalled and cannot leave Lockdown until its spec is corrected: ApplyFailed: NetworkPolicy resurgo.remote.staff.vpn: spec.ingress[0].ports[0].port: must be between 1 and 65535"
        );
        assert_eq!(blocked(&message), Some(Blocked::AccessPolicyStalled));

        // A correction the policy's controller has not judged yet: plain waiting again.
        observed.policies.insert(
            "staff".into(),
            stalled(policy("staff", "Normal", Some(AccessMode::Lockdown)), 1),
        );
        let waiting = lift_lockdown(&incident, &observed);
        assert_eq!(
            waiting,
            Outcome::Waiting("waiting for accesspolicy remote to leave Lockdown".into())
        );
        let Outcome::Waiting(message) = waiting else {
            unreachable!()
        };
        assert_eq!(blocked(&message), None);
    }

    #[test]
    fn a_stalled_policy_that_cannot_reach_lockdown_is_named() {
        let incident = incident("  accessPolicies: [staff]\n");
        let mut observed = Observed::default();
        observed.policies.insert(
            "staff".into(),
            stalled(policy("staff", "Normal", Some(AccessMode::Normal)), 2),
        );
        let Outcome::Waiting(message) = lockdown(&incident, &observed) else {
            panic!("the lockdown must wait while the policy is Stalled");
        };
        assert!(
            message.starts_with(
                "accesspolicy staff is Stalled and cannot reach Lockdown until its spec is corrected: ApplyFailed: NetworkPolicy"
            ),
            "{message}"
        );
        assert_eq!(blocked(&message), Some(Blocked::AccessPolicyStalled));
        // Once in Lockdown, a Stalled condition no longer holds the step.
        observed.policies.insert(
            "staff".into(),
            stalled(policy("staff", "Normal", Some(AccessMode::Lockdown)), 2),
        );
        assert!(matches!(lockdown(&incident, &observed), Outcome::Done(_)));
    }

    #[test]
    fn only_a_missing_object_or_a_stalled_policy_blocks_a_step() {
        assert_eq!(
            blocked("spec.accessPolicies: accesspolicy staff does not exist"),
            Some(Blocked::ReferenceNotFound)
        );
        assert_eq!(
            blocked(
                "accesspolicy staff is Stalled and cannot leave Lockdown until its spec is corrected: ApplyFailed: namespace x does not exist"
            ),
            Some(Blocked::AccessPolicyStalled)
        );
        assert_eq!(
            blocked("waiting for accesspolicy staff to leave Lockdown"),
            None
        );
        assert_eq!(
            blocked("waiting for staff, remote to report Lockdown"),
            None
        );
    }

    #[test]
    fn a_service_without_a_clean_backup_fails_the_step() {
        let incident = incident("  recoveryPlans: [lazio]\n");
        let plan: RecoveryPlan = crate::yaml::from_str(
            "apiVersion: resurgo.dev/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: lazio}\nspec:\n  tiers: [{name: t, rto: 1h}]\n  services: [{name: records, tier: t, namespace: records, workload: {fromBackup: {identitySecretRef: {name: lazio-age, namespace: resurgo-keys}}}}]\n",
        )
        .unwrap();
        let mut observed = Observed::default();
        observed.plans.insert("lazio".into(), plan);
        observed.restore_points = Some(vec![ChosenRestorePoint {
            plan: "lazio".into(),
            service: "records".into(),
            backup: None,
            backup_completed: None,
            data_loss_window: None,
            message: Some(
                "no completed backup of its namespace finished before compromisedSince".into(),
            ),
        }]);
        assert_eq!(
            choose_restore_points(&incident, &observed),
            Outcome::Failed("no restore point for lazio/records: no completed backup of its namespace finished before compromisedSince".into())
        );
    }

    #[test]
    fn a_credential_that_cannot_be_replaced_fails_the_step() {
        let incident = incident("  recoveryPlans: [lazio]\n");
        let stale = |refused: Option<&str>| SecretToRotate {
            plan: "lazio".into(),
            service: "dispatch".into(),
            namespace: "dispatch".into(),
            secret: RegeneratedSecret {
                name: "db".into(),
                keys: vec!["password".into()],
                length: None,
            },
            refused: refused.map(Into::into),
        };
        let mut observed = Observed {
            stale_secrets: Some(vec![stale(None)]),
            ..Default::default()
        };
        assert_eq!(
            rotate(&incident, &observed),
            Outcome::Act(
                Act::Rotate(vec![stale(None)]),
                "rotating dispatch/db".into()
            )
        );
        observed.stale_secrets = Some(vec![stale(Some("is immutable"))]);
        assert_eq!(
            rotate(&incident, &observed),
            Outcome::Failed("Secret dispatch/db is immutable".into())
        );
        observed.stale_secrets = Some(vec![]);
        assert!(matches!(rotate(&incident, &observed), Outcome::Done(_)));
    }
}
