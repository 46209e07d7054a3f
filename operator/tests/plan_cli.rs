//! `resurgo plan` as a GitOps pipeline runs it: the built binary on real files, judged by its
//! exit status and what it prints.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn resurgo_plan(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resurgo"))
        .args(["plan", "-f"])
        .arg(path)
        .output()
        .expect("run resurgo plan")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A directory of its own for one test, emptied first, under cargo's scratch space.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("plan_cli-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

#[test]
fn the_lazio_examples_plan_cleanly() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lazio");
    let output = resurgo_plan(&examples);
    let printed = text(&output);
    assert!(output.status.success(), "{printed}");
    // Column widths follow the longest name; compare words, not spaces.
    let words: Vec<String> = printed
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let words = words.join("\n");
    for expected in [
        "RecoveryPlan lazio-health",
        "1. life-critical RTO 15m expected ready after 3m (within RTO)",
        "4. booking RTO 72h expected ready after 4h48m (within RTO)",
        "5. clinical-records clinical takes 45m starts at 13m depends on hospital-network",
        "3. clinical: clinical-records",
        "Critical path: 4h48m",
        "dispatch-118 (3m) -> hospital-network (10m) -> clinical-records (45m) -> radiology (30m) -> balance-ledger (20m) -> cup-booking (2h) -> vaccine-booking (1h)",
        "1 RecoveryPlan in 7 YAML files",
    ] {
        assert!(
            words.contains(expected),
            "missing {expected:?} in:\n{printed}"
        );
    }
}

#[test]
fn a_plan_with_a_cycle_fails_and_names_the_cycle_and_the_file() {
    let dir = scratch("cycle");
    std::fs::create_dir_all(dir.join("plans")).expect("create plans dir");
    let file = dir.join("plans").join("cyclic.yaml");
    std::fs::write(
        &file,
        "
apiVersion: resurgo.dev/v1alpha1
kind: RecoveryPlan
metadata: {name: cyclic}
spec:
  tiers: [{name: clinical, rto: 4h}]
  services:
    - {name: records, tier: clinical, namespace: records, dependsOn: [network]}
    - {name: network, tier: clinical, namespace: network, dependsOn: [labs]}
    - {name: labs, tier: clinical, namespace: labs, dependsOn: [records]}
",
    )
    .expect("write plan");

    let output = resurgo_plan(&dir);
    let printed = text(&output);
    assert!(!output.status.success(), "{printed}");
    let cycle_line = printed
        .lines()
        .find(|line| line.contains("records -> network -> labs -> records"))
        .unwrap_or_else(|| panic!("no cycle in:\n{printed}"));
    assert!(
        cycle_line.contains(&file.display().to_string()),
        "{cycle_line}"
    );
    assert!(
        cycle_line.contains("spec.services[0].dependsOn[0]"),
        "{cycle_line}"
    );
}

#[test]
fn broken_yaml_and_wrong_types_are_reported_with_their_files() {
    let dir = scratch("malformed");
    std::fs::write(dir.join("broken.yaml"), "kind: RecoveryPlan\n  spec: [\n").expect("write");
    std::fs::write(
        dir.join("typed.yml"),
        "
apiVersion: resurgo.dev/v1alpha1
kind: RecoveryPlan
metadata: {name: typed}
spec:
  tiers: [{name: t, rto: 1h}]
  services:
    - {name: a, tier: t, namespace: a, dependsOn: b}
",
    )
    .expect("write");

    let output = resurgo_plan(&dir);
    let printed = text(&output);
    assert!(!output.status.success(), "{printed}");
    let broken = dir.join("broken.yaml").display().to_string();
    let typed = dir.join("typed.yml").display().to_string();
    assert!(
        printed.contains(&format!("{broken}: not valid YAML")),
        "{printed}"
    );
    assert!(
        printed.contains(&format!(
            "{typed}: spec.services[0].dependsOn: invalid type"
        )),
        "{printed}"
    );
}

#[test]
fn a_directory_without_a_plan_fails_and_says_so() {
    let dir = scratch("empty");
    std::fs::write(
        dir.join("configmap.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    )
    .expect("write");
    let output = resurgo_plan(&dir);
    let printed = text(&output);
    assert!(!output.status.success(), "{printed}");
    assert!(printed.contains("no RecoveryPlan found"), "{printed}");
}
