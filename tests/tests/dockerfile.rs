//! The Dockerfile cannot be built here (no container engine). What can drift is checked
//! instead: it builds with build/static-binary.sh (the script a developer runs, which
//! checks that the binary is static) and copies the path that script builds; it ends on a
//! distroless static base as the chart's non-root user.

use std::process::Command;

use resurgo_tests::repo_root;

fn dockerfile() -> Vec<String> {
    std::fs::read_to_string(repo_root().join("Dockerfile"))
        .expect("read Dockerfile")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The instructions of each stage, split at FROM.
fn stages() -> Vec<Vec<String>> {
    let mut stages: Vec<Vec<String>> = Vec::new();
    for line in dockerfile() {
        if line.starts_with("FROM ") {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("the Dockerfile starts with FROM")
            .push(line);
    }
    stages
}

#[test]
fn the_image_ships_the_binary_that_the_static_build_script_makes() {
    let stages = stages();
    assert_eq!(stages.len(), 2, "a build stage and the image: {stages:?}");
    let (build, image) = (&stages[0], &stages[1]);

    assert!(build[0].ends_with(" AS build"), "{}", build[0]);
    assert!(build.contains(&"WORKDIR /src".to_owned()), "{build:?}");
    let runs: Vec<&String> = build.iter().filter(|l| l.starts_with("RUN ")).collect();
    assert_eq!(
        runs,
        [&"RUN build/static-binary.sh".to_owned()],
        "the build stage runs the script and nothing else"
    );

    let script = repo_root().join("build/static-binary.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg("--print-path")
        .output()
        .expect("run build/static-binary.sh --print-path");
    assert!(output.status.success());
    let built = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let copy = image
        .iter()
        .find(|l| l.starts_with("COPY --from=build "))
        .expect("the image copies from the build stage");
    let source = copy.split_whitespace().nth(2).expect("COPY source");
    assert_eq!(
        source,
        format!("/src/{built}"),
        "the image copies another binary"
    );

    let script_text = std::fs::read_to_string(&script).unwrap();
    assert!(script_text.contains(r#"RUSTFLAGS="-C target-feature=+crt-static""#));
    assert!(script_text.contains("--locked"));
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let profile = built
        .split('/')
        .nth(2)
        .expect("target/<triple>/<profile>/resurgo");
    assert!(
        manifest.contains(&format!("[profile.{profile}]")),
        "Cargo.toml has no [profile.{profile}]"
    );
}

#[test]
fn the_image_is_distroless_and_runs_as_the_charts_non_root_user() {
    let stages = stages();
    let image = stages.last().unwrap();
    assert!(
        image[0].starts_with("FROM gcr.io/distroless/static"),
        "{}",
        image[0]
    );
    assert!(image.contains(&"USER 65532:65532".to_owned()), "{image:?}");
    let deployment =
        std::fs::read_to_string(repo_root().join("charts/resurgo/templates/deployment.yaml"))
            .unwrap();
    assert!(deployment.contains("runAsUser: 65532"));
    assert!(deployment.contains("runAsGroup: 65532"));
    assert!(image.iter().any(|l| l.starts_with("ENTRYPOINT [")));
}

#[test]
fn the_build_image_is_recent_enough_for_the_workspace() {
    let stages = stages();
    let from = &stages[0][0];
    let version = from
        .split("rust:")
        .nth(1)
        .and_then(|rest| rest.split('-').next())
        .expect("FROM ...rust:<version>-...");
    let minor = |v: &str| -> u32 { v.split('.').nth(1).unwrap().parse().unwrap() };
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let required = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("rust-version in Cargo.toml");
    assert!(
        minor(version) >= minor(&required),
        "the image's Rust {version} is older than rust-version {required}"
    );
}
