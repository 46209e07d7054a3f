//! The chaos loop (`bench --chaos N`): N recoveries of the chaos plan (tests/src/chaos.rs) on
//! one fresh cluster, each with the operator killed (SIGKILL) at a random moment and started
//! again at once, and one undisturbed recovery after them for comparison. Each trial is judged
//! by the invariants tests/tests/chaos.rs asserts, from watches only; the table lists when
//! each kill happened, how long the recovery took and every violation found.

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use kube::{Api, api::PostParams};
use resurgo::api::RecoveryPlan;
use resurgo_tests::chaos::{Rng, SERVICES, chaos_plan, record, until_ready, violations};
use tokio::time::Instant;

use crate::cluster::{self, Operator, Teardown};

/// One recovery of the chaos plan.
pub struct Trial {
    pub plan: String,
    /// Deployment steps (created, ready) seen before the kill; `None`: not disturbed.
    pub killed_after_step: Option<u64>,
    /// Seconds from the plan's creation to the kill.
    pub killed_at: f64,
    /// Seconds from the operator's restart to the plan Ready.
    pub restart_to_ready: f64,
    /// Seconds from the plan's creation to Ready.
    pub recovery: f64,
    pub violations: Vec<String>,
}

fn log(message: impl std::fmt::Display) {
    eprintln!("[bench] {message}");
}

/// Runs `trials` disturbed recoveries, then one undisturbed one.
pub async fn run(
    root: &Path,
    operator_binary: &Path,
    teardown: &mut Teardown,
    trials: u32,
    seed: Option<u64>,
) -> Result<(u64, Vec<Trial>)> {
    let mut rng = match seed {
        Some(seed) => Rng(seed | 1),
        None => Rng::seeded("bench --chaos"),
    };
    let seed = rng.0;
    // Correctness, not speed: the components' defaults, as the tests run them.
    let cluster = cluster::up(teardown, "chaos", false).await?;
    cluster.install_crds(root).await?;
    let log_file = root.join("target/bench/operator-chaos.log");
    teardown.operator = Some(Operator::spawn(operator_binary, &cluster, &log_file).await?);
    let plans: Api<RecoveryPlan> = Api::all(cluster.client.clone());
    let all_steps = 2 * SERVICES.len() as u64;
    let mut results = Vec::new();
    // The undisturbed baseline comes last: the first recovery on a fresh cluster pays for
    // its cold start (the first pods on the node, the controllers' first syncs).
    for number in 1..=trials + 1 {
        let name = format!("chaos-{number}");
        let kill = (number <= trials).then(|| {
            (
                rng.between(1, all_steps - 1),
                Duration::from_millis(rng.between(0, 300)),
            )
        });
        let (seen, mut steps, watches) = record(&cluster.client, &name).await;
        let created = Instant::now();
        plans
            .create(&PostParams::default(), &chaos_plan(&name, "bench"))
            .await
            .with_context(|| format!("create recoveryplan/{name}"))?;
        let (mut killed_at, mut restarted) = (0.0, created);
        if let Some((after, jitter)) = kill {
            tokio::time::timeout(
                Duration::from_secs(120),
                steps.wait_for(|n| *n as u64 >= after),
            )
            .await
            .with_context(|| format!("{name}: the recovery never reached step {after}"))??;
            tokio::time::sleep(jitter).await;
            if let Some(operator) = teardown.operator.take() {
                operator.kill9().await;
            }
            killed_at = created.elapsed().as_secs_f64();
            restarted = Instant::now();
            teardown.operator = Some(Operator::spawn(operator_binary, &cluster, &log_file).await?);
        }
        let ready = match until_ready(&plans, &name, Duration::from_secs(300)).await {
            Ok(ready) => ready,
            Err(error) => bail!(
                "{error}\nthe operator's log ({}) ends with:\n{}",
                log_file.display(),
                cluster::tail(&log_file, 20)
            ),
        };
        let ready_at = Instant::now();
        // Ready means the operator saw every Deployment ready; this process's watches may be
        // a moment behind it.
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            steps.wait_for(|n| *n as u64 >= all_steps),
        )
        .await;
        drop(watches);
        let seen = std::mem::take(&mut *seen.lock().expect("seen lock"));
        let found = violations(&cluster.client, &ready, &seen).await;
        let trial = Trial {
            plan: name,
            killed_after_step: kill.map(|(after, _)| after),
            killed_at,
            restart_to_ready: (ready_at - restarted).as_secs_f64(),
            recovery: (ready_at - created).as_secs_f64(),
            violations: found,
        };
        log(format!(
            "{}: {} in {:.2} s, {} violations",
            trial.plan,
            trial.killed_after_step.map_or_else(
                || "undisturbed".to_owned(),
                |s| format!("killed after step {s}")
            ),
            trial.recovery,
            trial.violations.len()
        ));
        results.push(trial);
    }
    Ok((seed, results))
}

/// The table of trials, and a summary line.
pub fn render(seed: u64, trials: &[Trial], machine: &str) -> String {
    let mut out = String::new();
    let disturbed: Vec<&Trial> = trials
        .iter()
        .filter(|t| t.killed_after_step.is_some())
        .collect();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "== chaos: {} recoveries of a {}-service plan in 3 tiers, the operator killed (kill -9) at a random moment of each and restarted",
        disturbed.len(),
        SERVICES.len()
    );
    let _ = writeln!(
        out,
        "machine: {machine}; seed {seed} (--chaos-seed {seed} replays the kill moments)"
    );
    let _ = writeln!(
        out,
        "{:<6} {:<10} {:>14} {:>9} {:>18} {:>10} {:>11}",
        "trial", "plan", "killed after", "kill at", "restart -> Ready", "recovery", "violations"
    );
    let all_steps = 2 * SERVICES.len();
    for (index, trial) in trials.iter().enumerate() {
        let number = index + 1;
        let (after, at, restart) = match trial.killed_after_step {
            Some(step) => (
                format!("step {step}/{all_steps}"),
                format!("{:.2} s", trial.killed_at),
                format!("{:.2} s", trial.restart_to_ready),
            ),
            None => ("(baseline)".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "{number:<6} {:<10} {after:>14} {at:>9} {restart:>18} {:>8.2} s {:>11}",
            trial.plan,
            trial.recovery,
            trial.violations.len()
        );
        for violation in &trial.violations {
            let _ = writeln!(out, "       VIOLATION: {violation}");
        }
    }
    let total: usize = disturbed.iter().map(|t| t.violations.len()).sum();
    let mut recoveries: Vec<f64> = disturbed.iter().map(|t| t.recovery).collect();
    recoveries.sort_by(f64::total_cmp);
    let baseline = trials
        .iter()
        .find(|t| t.killed_after_step.is_none())
        .map_or(0.0, |t| t.recovery);
    if let (Some(median), Some(max)) = (recoveries.get(recoveries.len() / 2), recoveries.last()) {
        let _ = writeln!(
            out,
            "chaos summary: {} kill -9 trials, {total} violations; recovery p50 {median:.2} s, max {max:.2} s (undisturbed {baseline:.2} s)",
            disturbed.len()
        );
    }
    out
}
