//! The incident's steps in order, and how the timeline moves: each step is entered once,
//! finishes once, and a finished step is never run again, so re-applying the same Incident
//! from Git changes nothing that was done. What a step finds is decided elsewhere
//! ([`super::checks`]); this module only keeps the books.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use crate::api::incident::{
    IncidentMode, IncidentPhase, IncidentSpec, IncidentState, IncidentStatus, StepState,
    TimelineEntry,
};

/// One step of an incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Every named AccessPolicy reports Lockdown.
    Lockdown,
    /// The ServiceAccounts of the named namespaces are re-created: their tokens are void.
    InvalidateServiceAccountTokens,
    /// Every BackupSchedule reports pruning frozen.
    FreezePruning,
    /// A restore point is recorded for every service that restores from a backup.
    ChooseRestorePoints,
    /// The plans (or a drill's copies of them) are rebuilt.
    Recover,
    /// Every credential the plans regenerate is newer than the compromise.
    RotateCredentials,
    /// A drill's copies are deleted.
    CleanUp,
    /// The named AccessPolicies are back to their own mode.
    LiftLockdown,
    /// Pruning runs again (unless another open incident holds it).
    UnfreezePruning,
}

impl Step {
    /// The name in `status.timeline[].step`.
    pub fn name(self) -> &'static str {
        match self {
            Step::Lockdown => "Lockdown",
            Step::InvalidateServiceAccountTokens => "InvalidateServiceAccountTokens",
            Step::FreezePruning => "FreezePruning",
            Step::ChooseRestorePoints => "ChooseRestorePoints",
            Step::Recover => "Recover",
            Step::RotateCredentials => "RotateCredentials",
            Step::CleanUp => "CleanUp",
            Step::LiftLockdown => "LiftLockdown",
            Step::UnfreezePruning => "UnfreezePruning",
        }
    }
}

/// The steps an incident goes through, in order, for its mode and state.
pub fn sequence(spec: &IncidentSpec) -> Vec<Step> {
    let clean_up = spec.drill.as_ref().is_none_or(|d| d.clean_up);
    match (spec.mode, spec.state) {
        (IncidentMode::Real, IncidentState::Open) => {
            let mut steps = vec![Step::Lockdown];
            // After the lockdown: those it suspended can no longer mint tokens for the
            // re-created accounts.
            if spec.invalidate_service_account_tokens.is_some() {
                steps.push(Step::InvalidateServiceAccountTokens);
            }
            steps.extend([
                Step::FreezePruning,
                Step::ChooseRestorePoints,
                Step::Recover,
                Step::RotateCredentials,
            ]);
            steps
        }
        (IncidentMode::Real, IncidentState::Closed) => {
            vec![Step::LiftLockdown, Step::UnfreezePruning]
        }
        (IncidentMode::Drill, IncidentState::Open) if clean_up => {
            vec![Step::ChooseRestorePoints, Step::Recover, Step::CleanUp]
        }
        (IncidentMode::Drill, IncidentState::Open) => {
            vec![Step::ChooseRestorePoints, Step::Recover]
        }
        // Closing a drill always removes its copies.
        (IncidentMode::Drill, IncidentState::Closed) => vec![Step::CleanUp],
    }
}

/// What a step found when checked.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome<A> {
    /// The step is complete; the text says what it did.
    Done(String),
    /// Not yet; the text says what it waits for. A watch brings the next check.
    Waiting(String),
    /// The step cannot complete; the text says why.
    Failed(String),
    /// The operator must do something first; the text says what.
    Act(A, String),
}

/// A transition worth an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub warning: bool,
    /// Such as `LockdownStarted`, `RecoverDone`, `RotateCredentialsFailed`.
    pub reason: String,
    pub note: String,
}

/// The timeline after checking the steps in order from the first unfinished one, and the
/// action the first step that needs one asks for.
pub struct Advance<A> {
    pub status: IncidentStatus,
    pub action: Option<A>,
    pub transitions: Vec<Transition>,
}

/// Moves the timeline on. `check` is asked about each unfinished step in order until one
/// is not done; it sees the status as it stands (restore points chosen by an earlier step).
pub fn advance<A>(
    spec: &IncidentSpec,
    previous: &IncidentStatus,
    now: Timestamp,
    mut check: impl FnMut(Step, &IncidentStatus) -> Outcome<A>,
) -> Advance<A> {
    let mut status = previous.clone();
    let mut transitions = Vec::new();
    let mut action = None;
    let steps = sequence(spec);
    let mut failed = false;

    // Steps of the open incident still running when it was closed did not complete.
    if spec.state == IncidentState::Closed {
        for entry in &mut status.timeline {
            if entry.state == StepState::Running && !steps.iter().any(|s| s.name() == entry.step) {
                entry.state = StepState::Failed;
                entry.finished = Some(Time(now));
                entry.message = Some("not finished: the incident was closed".into());
            }
        }
    }

    for step in steps {
        match entry(&status, step).map(|e| e.state) {
            Some(StepState::Done) => continue,
            Some(StepState::Failed) => {
                failed = true;
                continue;
            }
            _ => {}
        }
        // After a failure only clean-up still runs: a drill never leaves its copies behind.
        if failed && step != Step::CleanUp {
            continue;
        }
        if entry(&status, step).is_none() {
            status.timeline.push(TimelineEntry {
                step: step.name().into(),
                state: StepState::Running,
                started: Time(now),
                finished: None,
                message: None,
            });
            transitions.push(Transition {
                warning: false,
                reason: format!("{}Started", step.name()),
                note: format!("step {} started", step.name()),
            });
        }
        let outcome = check(step, &status);
        let entry = status
            .timeline
            .iter_mut()
            .find(|e| e.step == step.name())
            .expect("entered above");
        match outcome {
            Outcome::Done(message) => {
                entry.state = StepState::Done;
                entry.finished = Some(Time(now));
                transitions.push(Transition {
                    warning: false,
                    reason: format!("{}Done", step.name()),
                    note: message.clone(),
                });
                entry.message = Some(message);
            }
            Outcome::Failed(message) => {
                entry.state = StepState::Failed;
                entry.finished = Some(Time(now));
                transitions.push(Transition {
                    warning: true,
                    reason: format!("{}Failed", step.name()),
                    note: message.clone(),
                });
                entry.message = Some(message);
                failed = true;
            }
            Outcome::Waiting(message) => {
                entry.message = Some(message);
                break;
            }
            Outcome::Act(wanted, message) => {
                entry.message = Some(message);
                action = Some(wanted);
                break;
            }
        }
    }
    status.phase = Some(phase(spec, &status));
    Advance {
        status,
        action,
        transitions,
    }
}

fn entry(status: &IncidentStatus, step: Step) -> Option<&TimelineEntry> {
    status.timeline.iter().find(|e| e.step == step.name())
}

/// The phase the timeline puts the incident in.
pub fn phase(spec: &IncidentSpec, status: &IncidentStatus) -> IncidentPhase {
    let steps = sequence(spec);
    let state = |step| entry(status, step).map(|e| e.state);
    let all_done = steps.iter().all(|s| state(*s) == Some(StepState::Done));
    if spec.state == IncidentState::Closed {
        return if all_done {
            IncidentPhase::Closed
        } else {
            status.phase.unwrap_or(IncidentPhase::Pending)
        };
    }
    let any_failed = status.timeline.iter().any(|e| e.state == StepState::Failed);
    if any_failed {
        return IncidentPhase::Failed;
    }
    match steps.iter().find(|s| state(**s) != Some(StepState::Done)) {
        None => IncidentPhase::Recovered,
        Some(Step::Lockdown | Step::InvalidateServiceAccountTokens | Step::FreezePruning) => {
            IncidentPhase::LockingDown
        }
        Some(Step::ChooseRestorePoints) if spec.mode == IncidentMode::Real => {
            IncidentPhase::LockingDown
        }
        Some(_) if status.timeline.is_empty() => IncidentPhase::Pending,
        Some(_) => IncidentPhase::Recovering,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: &str, state: &str) -> IncidentSpec {
        crate::yaml::from_str(&format!(
            "compromisedSince: '2021-07-31T00:00:00Z'\nmode: {mode}\nstate: {state}\nrecoveryPlans: [lazio]\naccessPolicies: [staff]\n"
        ))
        .expect("a spec")
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn steps_of(status: &IncidentStatus) -> Vec<(String, StepState)> {
        status
            .timeline
            .iter()
            .map(|e| (e.step.clone(), e.state))
            .collect()
    }

    #[test]
    fn steps_run_in_order_and_stop_at_the_first_that_waits() {
        let spec = spec("Real", "Open");
        let mut asked = Vec::new();
        let advance = advance::<()>(&spec, &IncidentStatus::default(), at(0), |step, _| {
            asked.push(step);
            match step {
                Step::Lockdown => Outcome::Done("12 bindings suspended".into()),
                Step::FreezePruning => Outcome::Done("pruning frozen on 3 schedules".into()),
                _ => Outcome::Waiting("recoveryplan lazio not found".into()),
            }
        });
        assert_eq!(
            asked,
            [
                Step::Lockdown,
                Step::FreezePruning,
                Step::ChooseRestorePoints
            ]
        );
        assert_eq!(
            steps_of(&advance.status),
            [
                ("Lockdown".into(), StepState::Done),
                ("FreezePruning".into(), StepState::Done),
                ("ChooseRestorePoints".into(), StepState::Running),
            ]
        );
        assert_eq!(advance.status.phase, Some(IncidentPhase::LockingDown));
        let reasons: Vec<&str> = advance
            .transitions
            .iter()
            .map(|t| t.reason.as_str())
            .collect();
        assert_eq!(
            reasons,
            [
                "LockdownStarted",
                "LockdownDone",
                "FreezePruningStarted",
                "FreezePruningDone",
                "ChooseRestorePointsStarted"
            ]
        );
    }

    #[test]
    fn tokens_are_invalidated_right_after_the_lockdown_and_only_when_asked() {
        let mut spec = spec("Real", "Open");
        assert!(!sequence(&spec).contains(&Step::InvalidateServiceAccountTokens));
        spec.invalidate_service_account_tokens =
            Some(crate::yaml::from_str("namespaces: [emergency]\n").unwrap());
        assert_eq!(
            &sequence(&spec)[..3],
            [
                Step::Lockdown,
                Step::InvalidateServiceAccountTokens,
                Step::FreezePruning
            ]
        );
        let advance = advance::<()>(
            &spec,
            &IncidentStatus::default(),
            at(0),
            |step, _| match step {
                Step::Lockdown => Outcome::Done("done".into()),
                _ => Outcome::Waiting("reading ServiceAccounts".into()),
            },
        );
        assert_eq!(advance.status.phase, Some(IncidentPhase::LockingDown));
        // A drill never touches real accounts, whatever its spec says.
        let mut drill = spec.clone();
        drill.mode = IncidentMode::Drill;
        assert!(!sequence(&drill).contains(&Step::InvalidateServiceAccountTokens));
        // Neither does closing.
        let mut closed = spec;
        closed.state = IncidentState::Closed;
        assert!(!sequence(&closed).contains(&Step::InvalidateServiceAccountTokens));
    }

    #[test]
    fn finished_steps_are_never_checked_again() {
        let spec = spec("Real", "Open");
        let done = advance::<()>(&spec, &IncidentStatus::default(), at(0), |_, _| {
            Outcome::Done("done".into())
        });
        assert_eq!(done.status.phase, Some(IncidentPhase::Recovered));
        // The same incident re-applied: nothing is asked, nothing changes, no Event.
        let again = advance::<()>(&spec, &done.status, at(60), |step, _| {
            panic!("{step:?} checked again")
        });
        assert_eq!(again.status, done.status);
        assert!(again.transitions.is_empty());
    }

    #[test]
    fn an_action_is_asked_for_and_the_step_stays_running() {
        let spec = spec("Real", "Open");
        let advance = advance(
            &spec,
            &IncidentStatus::default(),
            at(0),
            |step, _| match step {
                Step::RotateCredentials => Outcome::Act("rotate", "rotating 2 secrets".into()),
                _ => Outcome::Done("done".into()),
            },
        );
        assert_eq!(advance.action, Some("rotate"));
        assert_eq!(advance.status.phase, Some(IncidentPhase::Recovering));
        assert_eq!(
            advance.status.timeline.last().unwrap().message.as_deref(),
            Some("rotating 2 secrets")
        );
    }

    #[test]
    fn a_failed_drill_still_cleans_up() {
        let spec = spec("Drill", "Open");
        let mut asked = Vec::new();
        let advance = advance::<()>(&spec, &IncidentStatus::default(), at(0), |step, _| {
            asked.push(step);
            match step {
                Step::Recover => Outcome::Failed("tier clinical failed".into()),
                _ => Outcome::Done("done".into()),
            }
        });
        assert_eq!(
            asked,
            [Step::ChooseRestorePoints, Step::Recover, Step::CleanUp]
        );
        assert_eq!(advance.status.phase, Some(IncidentPhase::Failed));
    }

    #[test]
    fn closing_lifts_the_lockdown_and_ends_what_was_still_running() {
        let open = spec("Real", "Open");
        let running = advance::<()>(
            &open,
            &IncidentStatus::default(),
            at(0),
            |step, _| match step {
                Step::Recover => Outcome::Waiting("1/2 plans ready".into()),
                _ => Outcome::Done("done".into()),
            },
        );
        let closed = spec("Real", "Closed");
        let lifting = advance::<()>(&closed, &running.status, at(10), |step, _| match step {
            Step::LiftLockdown => Outcome::Waiting("staff still in Lockdown".into()),
            _ => Outcome::Done("done".into()),
        });
        assert_eq!(lifting.status.phase, Some(IncidentPhase::Recovering));
        let recover = lifting
            .status
            .timeline
            .iter()
            .find(|e| e.step == "Recover")
            .unwrap();
        assert_eq!(recover.state, StepState::Failed);
        let lifted = advance::<()>(&closed, &lifting.status, at(20), |_, _| {
            Outcome::Done("done".into())
        });
        assert_eq!(lifted.status.phase, Some(IncidentPhase::Closed));
    }
}
