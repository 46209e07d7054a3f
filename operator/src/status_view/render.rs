//! The text form of the status view: one block per plan, one progress bar per tier, one line
//! per service saying what it is doing or waiting for. Plain text, so it reads the same in
//! a terminal, a CI log or a pipe; the terminal view only redraws it.

use std::fmt::Write;

use crate::api::recovery_plan::{PlanPhase, RtoResult, ServicePhase};

use super::view::{IncidentView, PlanView, TierView};

/// Width of a tier's progress bar, in characters.
const BAR_WIDTH: usize = 20;

/// Renders `plans` as text.
pub fn render(plans: &[PlanView]) -> String {
    if plans.is_empty() {
        return "no RecoveryPlans found\n".to_owned();
    }
    let mut out = String::new();
    for (i, plan) in plans.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        render_plan(&mut out, plan);
    }
    out
}

/// Renders an incident: its timeline, restore points and tier results, then its plans.
pub fn render_incident(incident: &IncidentView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Incident {}  {:?}  {:?}  {:?}  compromised since {}",
        incident.name, incident.mode, incident.state, incident.phase, incident.compromised_since
    );
    if incident.timeline.is_empty() {
        out.push_str("  no step taken yet\n");
    }
    for step in &incident.timeline {
        let line = format!(
            "  {:<8} {:<20} {:>7}  {}",
            format!("{:?}", step.state),
            step.step,
            seconds(step.elapsed_seconds),
            step.message.as_deref().unwrap_or("")
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if !incident.restore_points.is_empty() {
        out.push_str("  Restore points:\n");
        for point in &incident.restore_points {
            let _ = writeln!(
                out,
                "    {}/{}  {}  data-loss window {}",
                point.plan,
                point.service,
                point.backup.as_deref().unwrap_or("NONE"),
                point.data_loss_window.as_deref().unwrap_or("-"),
            );
        }
    }
    if !incident.tiers.is_empty() {
        out.push_str("  Tiers against their RTO:\n");
        for tier in &incident.tiers {
            let _ = writeln!(
                out,
                "    {}/{}  ready after {}  RTO {}  {}",
                tier.plan,
                tier.tier,
                tier.time_to_ready.as_deref().unwrap_or("-"),
                tier.rto_target,
                match tier.met {
                    Some(true) => "met",
                    Some(false) => "BREACHED",
                    None => "pending",
                }
            );
        }
    }
    for plan in &incident.plans {
        out.push('\n');
        render_plan(&mut out, plan);
    }
    out
}

fn render_plan(out: &mut String, plan: &PlanView) {
    let _ = writeln!(
        out,
        "RecoveryPlan {}  {}  {}/{} ready  elapsed {}  RTO {}",
        plan.name,
        phase_word(plan.phase),
        plan.ready_services,
        plan.total_services,
        elapsed(plan.elapsed_seconds),
        rto_word(plan.rto),
    );
    if let Some(reason) = &plan.stalled {
        let _ = writeln!(out, "  STALLED: {reason}");
    }
    let name_width = plan
        .tiers
        .iter()
        .flat_map(|t| t.services.iter().map(|s| s.name.len()))
        .max()
        .unwrap_or(0);
    for tier in &plan.tiers {
        render_tier(out, tier, name_width);
    }
}

fn render_tier(out: &mut String, tier: &TierView, name_width: usize) {
    let _ = writeln!(
        out,
        "  {} {:<14} {}/{}  {} / RTO {}  {}",
        bar(tier.ready_services, tier.total_services),
        tier.name,
        tier.ready_services,
        tier.total_services,
        elapsed(tier.elapsed_seconds),
        tier.rto_target,
        match tier.rto {
            RtoResult::Met => "met",
            RtoResult::Breached => "BREACHED",
            RtoResult::Pending => phase_word(tier.phase),
        },
    );
    for service in &tier.services {
        let detail = match (service.phase, &service.message) {
            (ServicePhase::Blocked | ServicePhase::Pending, _)
                if !service.blocked_on.is_empty() =>
            {
                format!("waiting for {}", service.blocked_on.join(", "))
            }
            // "Ready  ready" says nothing twice.
            (phase, Some(message)) if !message.eq_ignore_ascii_case(&format!("{phase:?}")) => {
                message.clone()
            }
            _ => String::new(),
        };
        let time = service
            .elapsed_seconds
            .map(|s| format!(" {:>7}", seconds(s)))
            .unwrap_or_else(|| " ".repeat(8));
        let line = format!(
            "      {:<width$}  {:<13}{}  {}",
            service.name,
            format!("{:?}", service.phase),
            time,
            detail,
            width = name_width,
        );
        // Trailing spaces would make the diffs of watch output noisy.
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// `[########------------]`: the share of the tier's services that are ready.
fn bar(ready: u32, total: u32) -> String {
    let filled = if total == 0 {
        BAR_WIDTH
    } else {
        (ready as usize * BAR_WIDTH) / total as usize
    };
    format!("[{}{}]", "#".repeat(filled), "-".repeat(BAR_WIDTH - filled))
}

fn elapsed(seconds_opt: Option<u64>) -> String {
    seconds_opt.map_or_else(|| "-".to_owned(), seconds)
}

/// `59s`, `4m05s`, `2h03m`: short enough for a column, exact enough to compare to an RTO.
fn seconds(total: u64) -> String {
    match total {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn phase_word(phase: PlanPhase) -> &'static str {
    match phase {
        PlanPhase::Pending => "Pending",
        PlanPhase::Recovering => "Recovering",
        PlanPhase::Recovered => "Recovered",
        PlanPhase::Degraded => "Degraded",
        PlanPhase::Failed => "Failed",
    }
}

fn rto_word(rto: RtoResult) -> &'static str {
    match rto {
        RtoResult::Pending => "pending",
        RtoResult::Met => "met",
        RtoResult::Breached => "BREACHED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status_view::view::ServiceView;

    fn view() -> PlanView {
        PlanView {
            name: "lazio".into(),
            phase: PlanPhase::Recovering,
            ready_services: 1,
            total_services: 3,
            rto: RtoResult::Pending,
            elapsed_seconds: Some(125),
            stalled: None,
            tiers: vec![
                TierView {
                    name: "life-critical".into(),
                    phase: PlanPhase::Recovered,
                    ready_services: 1,
                    total_services: 1,
                    rto_target: "15m".into(),
                    rto: RtoResult::Met,
                    elapsed_seconds: Some(40),
                    services: vec![ServiceView {
                        name: "dispatch-118".into(),
                        phase: ServicePhase::Ready,
                        blocked_on: vec![],
                        message: Some("ready".into()),
                        elapsed_seconds: Some(40),
                    }],
                },
                TierView {
                    name: "booking".into(),
                    phase: PlanPhase::Recovering,
                    ready_services: 0,
                    total_services: 2,
                    rto_target: "72h".into(),
                    rto: RtoResult::Pending,
                    elapsed_seconds: Some(125),
                    services: vec![
                        ServiceView {
                            name: "cup".into(),
                            phase: ServicePhase::Deploying,
                            blocked_on: vec![],
                            message: Some("waiting for deployment/cup".into()),
                            elapsed_seconds: Some(85),
                        },
                        ServiceView {
                            name: "vaccines".into(),
                            phase: ServicePhase::Blocked,
                            blocked_on: vec!["cup".into()],
                            message: None,
                            elapsed_seconds: None,
                        },
                    ],
                },
            ],
        }
    }

    #[test]
    fn tiers_get_bars_and_services_say_what_they_wait_for() {
        let text = render(&[view()]);
        assert_eq!(
            text,
            "\
RecoveryPlan lazio  Recovering  1/3 ready  elapsed 2m05s  RTO pending
  [####################] life-critical  1/1  40s / RTO 15m  met
      dispatch-118  Ready             40s
  [--------------------] booking        0/2  2m05s / RTO 72h  Recovering
      cup           Deploying       1m25s  waiting for deployment/cup
      vaccines      Blocked                waiting for cup
"
        );
    }

    #[test]
    fn an_incident_shows_its_timeline_restore_points_and_tiers() {
        use crate::api::incident::{
            ChosenRestorePoint, IncidentMode, IncidentPhase, IncidentState, StepState, TierResult,
        };
        use crate::status_view::view::StepView;
        let incident = IncidentView {
            name: "ransomware".into(),
            mode: IncidentMode::Real,
            state: IncidentState::Open,
            phase: IncidentPhase::Recovering,
            compromised_since: "2021-07-31T23:00:00Z".into(),
            timeline: vec![
                StepView {
                    step: "Lockdown".into(),
                    state: StepState::Done,
                    elapsed_seconds: 2,
                    message: Some("lazio-access in Lockdown".into()),
                },
                StepView {
                    step: "Recover".into(),
                    state: StepState::Running,
                    elapsed_seconds: 125,
                    message: Some("recovering: lazio 1/3".into()),
                },
            ],
            restore_points: vec![ChosenRestorePoint {
                plan: "lazio".into(),
                service: "records".into(),
                backup: Some("nightly-0731".into()),
                backup_completed: None,
                data_loss_window: Some("21h".into()),
                message: None,
            }],
            tiers: vec![TierResult {
                plan: "lazio".into(),
                tier: "life-critical".into(),
                rto_target: "15m".into(),
                time_to_ready: Some("40s".into()),
                met: Some(true),
            }],
            plans: vec![],
        };
        assert_eq!(
            render_incident(&incident),
            "\
Incident ransomware  Real  Open  Recovering  compromised since 2021-07-31T23:00:00Z
  Done     Lockdown                  2s  lazio-access in Lockdown
  Running  Recover                2m05s  recovering: lazio 1/3
  Restore points:
    lazio/records  nightly-0731  data-loss window 21h
  Tiers against their RTO:
    lazio/life-critical  ready after 40s  RTO 15m  met
"
        );
    }

    #[test]
    fn bars_fill_in_proportion() {
        assert_eq!(bar(1, 2), format!("[{}{}]", "#".repeat(10), "-".repeat(10)));
        assert_eq!(bar(0, 0), format!("[{}]", "#".repeat(20)));
    }

    #[test]
    fn durations_read_like_an_rto() {
        assert_eq!(seconds(59), "59s");
        assert_eq!(seconds(245), "4m05s");
        assert_eq!(seconds(7380), "2h03m");
    }
}
