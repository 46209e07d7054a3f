//! `resurgo status` and `kubectl resurgo status` against the real control plane, reading
//! what the operator that tests/run.sh runs writes.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use resurgo_tests::{apply, deployment, install_crds, k8s_bin, kubectl, resurgo_bin, unique_name};
use serde_json::{Value, json};

fn status(args: &[&str]) -> std::process::Output {
    Command::new(resurgo_bin("resurgo"))
        .arg("status")
        .args(args)
        .output()
        .expect("run resurgo status")
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn status_follows_a_recovery_and_the_kubectl_plugin_shows_the_same() {
    install_crds().await;
    let name = unique_name("status");
    let namespace = unique_name("status-ns");
    let plan = |paused: bool| {
        json!({
            "apiVersion": "resurgo.dev/v1alpha1", "kind": "RecoveryPlan",
            "metadata": {"name": name},
            "spec": {
                "paused": paused,
                "tiers": [{"name": "life-critical", "rto": "15m"}, {"name": "booking", "rto": "72h"}],
                "services": [
                    {"name": "dispatch", "tier": "life-critical", "namespace": namespace,
                     "workload": {"manifests": [deployment("dispatch", None)]}},
                    {"name": "booking", "tier": "booking", "namespace": namespace, "dependsOn": ["dispatch"],
                     "workload": {"manifests": [deployment("booking", None)]}}
                ]
            }
        })
    };
    apply(&plan(true).to_string());

    // Follow the plan from before it starts: not a terminal, so one JSON document per change.
    let mut watch = Command::new(resurgo_bin("resurgo"))
        .args(["status", &name, "--watch", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start resurgo status --watch");
    let (sender, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = watch.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(20), lines.recv())
        .await
        .expect("a first frame within 20s")
        .expect("a line");
    let first: Value = serde_json::from_str(&first).expect("a JSON frame");
    assert_eq!(first[0]["name"], json!(name));
    assert_eq!(first[0]["readyServices"], json!(0));

    apply(&plan(false).to_string());
    let mut frames = vec![first];
    let recovered = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.recv().await {
            let frame: Value = serde_json::from_str(&line).expect("a JSON frame");
            let done = frame[0]["phase"] == json!("Recovered");
            frames.push(frame);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        recovered,
        Ok(true),
        "the watch never showed the plan Recovered; frames: {frames:#?}"
    );
    let _ = watch.kill();
    let _ = watch.wait();
    // The watch showed the recovery as it went: some frame had the life-critical tier ready
    // while booking was not yet.
    assert!(
        frames
            .iter()
            .any(|f| f[0]["tiers"][0]["readyServices"] == json!(1)
                && f[0]["tiers"][1]["readyServices"] == json!(0)),
        "no frame showed the tiers in between: {frames:#?}"
    );

    // The terminal view, plain because stdout is a pipe.
    let text = status(&[&name]);
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.starts_with(&format!("RecoveryPlan {name}  Recovered  2/2 ready")),
        "{text}"
    );
    assert!(
        text.contains("[####################] life-critical  1/1"),
        "{text}"
    );
    assert!(text.contains("/ RTO 72h  met"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "escape codes in plain output: {text:?}"
    );

    // kubectl finds the plugin on PATH and passes it the words after `resurgo`.
    let path = format!(
        "{}:{}:{}",
        resurgo_bin("").display(),
        k8s_bin().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let plugin = Command::new(k8s_bin().join("kubectl"))
        .args(["resurgo", "status", &name, "-o", "yaml"])
        .env("PATH", path)
        .output()
        .expect("run kubectl resurgo");
    assert!(
        plugin.status.success(),
        "{}",
        String::from_utf8_lossy(&plugin.stderr)
    );
    let view: Value = serde_yaml::from_slice(&plugin.stdout).expect("YAML");
    assert_eq!(view[0]["phase"], json!("Recovered"));
    assert_eq!(view[0]["tiers"][0]["rto"], json!("Met"));
    assert_eq!(view[0]["tiers"][1]["services"][0]["phase"], json!("Ready"));

    let _ = kubectl(&["delete", "recoveryplan", &name, "--wait=false"], None);
    let _ = kubectl(&["delete", "namespace", &namespace, "--wait=false"], None);
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn status_of_a_plan_that_does_not_exist_says_so() {
    install_crds().await;
    let output = status(&["no-such-plan"]);
    assert!(!output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "resurgo: recoveryplan \"no-such-plan\" not found\n"
    );
}
