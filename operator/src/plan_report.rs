//! `resurgo plan`: reads the RecoveryPlans under a path, plans each one, and writes what the
//! recovery would do or every reason it cannot, each error with the file it came from. For
//! GitOps CI: it reads files only and never talks to a cluster.

use std::{
    fmt::{self, Write as _},
    fs,
    path::{Path, PathBuf},
    time::Duration as StdDuration,
};

use resurgo::{
    api::{
        RecoveryPlan,
        recovery_plan::{RecoveryPlanSpec, Service, Tier},
    },
    planner::{self, PlanError, RecoveryOrder},
    yaml,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Everything found under the path given to `resurgo plan`.
pub struct Report {
    pub root: PathBuf,
    /// How many YAML files were read.
    pub files: usize,
    pub plans: Vec<PlanEntry>,
    pub unreadable: Vec<Unreadable>,
}

/// One RecoveryPlan document.
pub struct PlanEntry {
    pub file: PathBuf,
    pub name: String,
    pub outcome: Outcome,
}

pub enum Outcome {
    Planned(RecoveryOrder),
    Invalid(Vec<PlanError>),
    /// The document is not a RecoveryPlan as the API defines it (a field of the wrong type,
    /// a required one missing): there is nothing to plan.
    Malformed(Vec<FieldProblem>),
}

/// Where a RecoveryPlan document does not match the API types, as closely as it can be told.
pub struct FieldProblem {
    /// Such as `spec.services[3].dependsOn`; empty for the document as a whole.
    pub path: String,
    pub message: String,
}

/// A file or directory that could not be read as YAML: it may hold a plan, so it fails the
/// check like an invalid plan does.
pub struct Unreadable {
    pub path: PathBuf,
    pub error: ReadError,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    #[error("not valid YAML: {0}")]
    Yaml(#[from] yaml::YamlError),
}

/// Why `resurgo plan` exits with a failure.
#[derive(Debug)]
pub struct CheckFailed {
    root: PathBuf,
    plans: usize,
    invalid: usize,
    unreadable: usize,
}

impl fmt::Display for CheckFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut reasons = Vec::new();
        if self.plans == 0 {
            reasons.push(format!("no RecoveryPlan found in {}", self.root.display()));
        }
        if self.invalid > 0 {
            reasons.push(format!(
                "{} of {} cannot be planned",
                self.invalid,
                count(self.plans, "RecoveryPlan")
            ));
        }
        if self.unreadable > 0 {
            reasons.push(format!(
                "{} could not be read",
                count(self.unreadable, "file")
            ));
        }
        f.write_str(&reasons.join("; "))
    }
}

impl std::error::Error for CheckFailed {}

/// Reads and plans every RecoveryPlan under `root`: the file itself, or every `*.yaml` and
/// `*.yml` file below the directory. Documents of other kinds are skipped.
pub fn check(root: &Path) -> Report {
    let mut report = Report {
        root: root.to_owned(),
        files: 0,
        plans: Vec::new(),
        unreadable: Vec::new(),
    };
    let mut files = Vec::new();
    match fs::metadata(root) {
        Ok(meta) if meta.is_dir() => yaml_files(root, &mut files, &mut report.unreadable),
        Ok(_) => files.push(root.to_owned()),
        Err(error) => report.unreadable.push(Unreadable {
            path: root.to_owned(),
            error: error.into(),
        }),
    }
    for file in files {
        match read_documents(&file) {
            Ok(documents) => {
                report.files += 1;
                for document in documents.iter().filter(|d| is_recovery_plan(d)) {
                    report.plans.push(plan_document(&file, document));
                }
            }
            Err(error) => report.unreadable.push(Unreadable { path: file, error }),
        }
    }
    report
}

fn yaml_files(dir: &Path, files: &mut Vec<PathBuf>, unreadable: &mut Vec<Unreadable>) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            unreadable.push(Unreadable {
                path: dir.to_owned(),
                error: error.into(),
            });
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    // Sorted, so that the output is the same on every machine and diffs well in CI logs.
    paths.sort();
    for path in paths {
        // A link to a directory is not followed: it could lead back up the tree.
        let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if is_dir {
            yaml_files(&path, files, unreadable);
        } else if path.is_file() && path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
}

fn read_documents(file: &Path) -> Result<Vec<Value>, ReadError> {
    let text = fs::read_to_string(file)?;
    Ok(yaml::documents(&text)?)
}

fn is_recovery_plan(document: &Value) -> bool {
    document["kind"] == "RecoveryPlan"
        && document["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("resurgo.dev/"))
}

fn plan_document(file: &Path, document: &Value) -> PlanEntry {
    let name = document["metadata"]["name"]
        .as_str()
        .unwrap_or("(unnamed)")
        .to_owned();
    let outcome = match serde_json::from_value::<RecoveryPlan>(document.clone()) {
        Ok(plan) => match planner::plan(&plan.spec) {
            Ok(order) => Outcome::Planned(order),
            Err(errors) => Outcome::Invalid(errors),
        },
        Err(error) => Outcome::Malformed(field_problems(document, &error)),
    };
    PlanEntry {
        file: file.to_owned(),
        name,
        outcome,
    }
}

/// serde says what is wrong but not where; trying the tiers and services one by one, then
/// the spec, then the document, narrows it down to a field.
fn field_problems(document: &Value, error: &serde_json::Error) -> Vec<FieldProblem> {
    let spec = &document["spec"];
    let mut problems = Vec::new();
    for (list, read) in [
        ("tiers", first_problem::<Tier> as fn(&Value, String) -> _),
        ("services", first_problem::<Service>),
    ] {
        for (i, item) in spec[list].as_array().into_iter().flatten().enumerate() {
            problems.extend(read(item, format!("spec.{list}[{i}]")));
        }
    }
    if problems.is_empty() {
        let whole = first_problem::<RecoveryPlanSpec>(spec, "spec".into())
            .or_else(|| first_problem::<RecoveryPlan>(document, String::new()));
        problems.push(whole.unwrap_or_else(|| FieldProblem {
            path: String::new(),
            message: error.to_string(),
        }));
    }
    problems
}

/// The error reading `value` as a `T`, at the field whose removal changes the error: serde
/// stops at the first bad field, so removing any other field leaves the error as it was. A
/// missing field is reported where it is missing.
fn first_problem<T: DeserializeOwned>(value: &Value, path: String) -> Option<FieldProblem> {
    let message = serde_json::from_value::<T>(value.clone())
        .err()?
        .to_string();
    let culprit = value
        .as_object()
        .filter(|_| !message.starts_with("missing field"))
        .and_then(|fields| {
            fields.keys().find(|key| {
                let mut without = fields.clone();
                without.remove(*key);
                serde_json::from_value::<T>(Value::Object(without))
                    .map_or_else(|e| e.to_string() != message, |_| true)
            })
        });
    let path = match (culprit, path.is_empty()) {
        (Some(key), true) => key.clone(),
        (Some(key), false) => format!("{path}.{key}"),
        (None, _) => path,
    };
    Some(FieldProblem { path, message })
}

impl Report {
    /// Whether `resurgo plan` succeeds: at least one plan, every plan valid, every file read.
    pub fn verdict(&self) -> Result<(), CheckFailed> {
        let invalid = self
            .plans
            .iter()
            .filter(|p| !matches!(p.outcome, Outcome::Planned(_)))
            .count();
        if self.plans.is_empty() || invalid > 0 || !self.unreadable.is_empty() {
            return Err(CheckFailed {
                root: self.root.clone(),
                plans: self.plans.len(),
                invalid,
                unreadable: self.unreadable.len(),
            });
        }
        Ok(())
    }

    /// The report as text for a terminal or a CI log.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for entry in &self.plans {
            render_entry(&mut out, entry);
            out.push('\n');
        }
        for unreadable in &self.unreadable {
            let _ = writeln!(
                out,
                "error: {}: {}",
                unreadable.path.display(),
                unreadable.error
            );
        }
        let valid = self
            .plans
            .iter()
            .filter(|p| matches!(p.outcome, Outcome::Planned(_)))
            .count();
        let root = self.root.display();
        let files = count(self.files, "YAML file");
        let _ = if self.plans.is_empty() {
            writeln!(out, "no RecoveryPlan found in {files} read from {root}")
        } else {
            writeln!(
                out,
                "{} in {files} read from {root}: {valid} valid, {} with errors",
                count(self.plans.len(), "RecoveryPlan"),
                self.plans.len() - valid,
            )
        };
        out
    }
}

fn render_entry(out: &mut String, entry: &PlanEntry) {
    let file = entry.file.display();
    let _ = write!(out, "RecoveryPlan {} ({file})", entry.name);
    match &entry.outcome {
        Outcome::Planned(order) => render_order(out, order),
        Outcome::Invalid(errors) => {
            let _ = writeln!(out, ": {}", count(errors.len(), "error"));
            for error in errors {
                let _ = writeln!(out, "  error: {file}: {error}");
            }
        }
        Outcome::Malformed(problems) => {
            let _ = writeln!(out, ": not a valid RecoveryPlan");
            for problem in problems {
                let at = if problem.path.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", problem.path)
                };
                let _ = writeln!(out, "  error: {file}: {at}{}", problem.message);
            }
        }
    }
}

fn render_order(out: &mut String, order: &RecoveryOrder) {
    let _ = writeln!(
        out,
        ": {} in {}, {}",
        count(order.services.len(), "service"),
        count(order.tiers.len(), "tier"),
        count(order.waves.len(), "wave"),
    );

    let _ = writeln!(out, "  Tiers, most urgent first:");
    let name_width = width(order.tiers.iter().map(|t| t.name.len()));
    let rto_width = width(order.tiers.iter().map(|t| human(t.rto).len()));
    for (i, tier) in order.tiers.iter().enumerate() {
        let verdict = if tier.meets_rto() {
            "within RTO"
        } else {
            "OVER RTO"
        };
        let _ = writeln!(
            out,
            "    {:>2}. {:name_width$}  RTO {:rto_width$}  expected ready after {} ({verdict})",
            i + 1,
            tier.name,
            human(tier.rto),
            human(tier.ready_at),
        );
    }

    let _ = writeln!(out, "  Services, in recovery order:");
    let name_width = width(order.services.iter().map(|s| s.name.len()));
    let tier_width = width(order.services.iter().map(|s| s.tier.len()));
    let took_width = width(
        order
            .services
            .iter()
            .map(|s| human(s.expected_duration).len()),
    );
    let start_width = width(order.services.iter().map(|s| human(s.starts_at).len()));
    for (i, service) in order.services.iter().enumerate() {
        let after = if service.depends_on.is_empty() {
            String::new()
        } else {
            format!("  depends on {}", service.depends_on.join(", "))
        };
        let line = format!(
            "    {:>2}. {:name_width$}  {:tier_width$}  takes {:took_width$}  starts at {:start_width$}{after}",
            i + 1,
            service.name,
            service.tier,
            human(service.expected_duration),
            human(service.starts_at),
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }

    let _ = writeln!(out, "  Waves:");
    for (i, wave) in order.waves.iter().enumerate() {
        let _ = writeln!(
            out,
            "    {:>2}. {}: {}",
            i + 1,
            wave.tier,
            wave.services.join(", ")
        );
    }

    let path = &order.critical_path;
    let steps: Vec<String> = path
        .services
        .iter()
        .map(|name| {
            let took = order.service(name).map(|s| human(s.expected_duration));
            format!("{name} ({})", took.unwrap_or_default())
        })
        .collect();
    let _ = writeln!(out, "  Critical path: {}", human(path.length));
    let _ = writeln!(out, "    {}", steps.join(" -> "));
}

fn count(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

fn width(lengths: impl Iterator<Item = usize>) -> usize {
    lengths.max().unwrap_or(0)
}

/// A duration written the way plans write them: `4h48m`, `1m30s`, `500ms`.
fn human(duration: StdDuration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".into();
    }
    let parts = [
        (millis / 3_600_000, "h"),
        (millis / 60_000 % 60, "m"),
        (millis / 1_000 % 60, "s"),
        (millis % 1_000, "ms"),
    ];
    let mut out = String::new();
    for (amount, unit) in parts {
        if amount > 0 {
            let _ = write!(out, "{amount}{unit}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_plans_that_set_them() {
        let cases = [
            (0, "0s"),
            (500, "500ms"),
            (90_000, "1m30s"),
            (5_280_000, "1h28m"),
            (259_200_000, "72h"),
        ];
        for (millis, text) in cases {
            assert_eq!(human(StdDuration::from_millis(millis)), text);
        }
    }

    fn problems(yaml_text: &str) -> Vec<String> {
        let document = yaml::from_str::<Value>(yaml_text).expect("YAML");
        let error = serde_json::from_value::<RecoveryPlan>(document.clone())
            .expect_err("the document is malformed");
        field_problems(&document, &error)
            .into_iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect()
    }

    const PLAN: &str = "
apiVersion: resurgo.dev/v1alpha1
kind: RecoveryPlan
metadata: {name: p}
spec:
  maxParallel: MAX
  tiers: [{name: t, rto: 1h}]
  services:
    - {name: a, tier: t, namespace: a, expectedDuration: DURATION}
    - {name: b, tier: t}
";

    #[test]
    fn a_field_of_the_wrong_type_is_found_in_its_service() {
        let found = problems(&PLAN.replace("MAX", "2").replace("DURATION", "[5]"));
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].starts_with("spec.services[0].expectedDuration: invalid type"));
        assert_eq!(found[1], "spec.services[1]: missing field `namespace`");
    }

    #[test]
    fn a_wrong_spec_field_is_found_in_the_spec() {
        let text = PLAN
            .replace("MAX", "ten")
            .replace("DURATION", "5m")
            .replace("{name: b, tier: t}", "{name: b, tier: t, namespace: b}");
        assert_eq!(
            problems(&text),
            ["spec.maxParallel: invalid type: string \"ten\", expected u32"]
        );
    }
}
