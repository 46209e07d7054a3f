//! Every manifest in examples/ must read into the Rust types: the controllers see exactly
//! what users see in the docs.

use std::path::{Path, PathBuf};

use crate::{
    api::{AccessPolicy, Backup, BackupSchedule, BackupStore, Incident, RecoveryPlan},
    yaml,
};

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read examples dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

fn read_as<T: serde::de::DeserializeOwned>(path: &Path, document: serde_json::Value) {
    if let Err(error) = serde_json::from_value::<T>(document) {
        panic!("{}: {error}", path.display());
    }
}

#[test]
fn every_example_reads_into_its_rust_type() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    let mut kinds_seen = std::collections::BTreeSet::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read example");
        for document in yaml::documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        {
            let kind = document["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "RecoveryPlan" => read_as::<RecoveryPlan>(path, document),
                "BackupStore" => read_as::<BackupStore>(path, document),
                "BackupSchedule" => read_as::<BackupSchedule>(path, document),
                "Backup" => read_as::<Backup>(path, document),
                "AccessPolicy" => read_as::<AccessPolicy>(path, document),
                "Incident" => read_as::<Incident>(path, document),
                other => panic!("{}: unexpected kind {other:?} in examples", path.display()),
            }
            kinds_seen.insert(kind);
        }
    }
    assert_eq!(kinds_seen.len(), 6, "examples cover only {kinds_seen:?}");
}
