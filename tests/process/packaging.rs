//! What the production image contains, read from the Dockerfile (no Docker engine runs here):
//! the build compiles only the `audit-manager` binary, the runtime stage copies only that
//! binary, and the git commit reaches `GET /version` through a build argument. Also: the
//! service crate no longer carries the load generator's dependencies.

use std::path::Path;

fn read(file: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
        .unwrap_or_else(|e| panic!("cannot read {file}: {e}"))
}

/// Dockerfile instructions with continuation lines joined and comments dropped.
fn instructions(dockerfile: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

/// The instructions of each stage (split at `FROM`).
fn stages(dockerfile: &str) -> Vec<Vec<String>> {
    let mut stages: Vec<Vec<String>> = Vec::new();
    for i in instructions(dockerfile) {
        if i.starts_with("FROM ") {
            stages.push(Vec::new());
        }
        if let Some(stage) = stages.last_mut() {
            stage.push(i);
        }
    }
    stages
}

#[test]
fn the_image_builds_only_audit_manager() {
    let dockerfile = read("Dockerfile");
    let all = instructions(&dockerfile);
    let builds: Vec<&String> = all.iter().filter(|i| i.contains("cargo build")).collect();
    assert_eq!(builds.len(), 1, "exactly one cargo build: {builds:?}");
    let build = builds[0];
    let args: Vec<&str> = build
        .split("cargo build")
        .nth(1)
        .and_then(|rest| rest.split("&&").next())
        .unwrap_or("")
        .split_whitespace()
        .collect();
    for required in ["--release", "--locked", "--bin"] {
        assert!(args.contains(&required), "{build}: needs {required}");
    }
    let bins: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "--bin")
        .map(|w| w[1])
        .collect();
    assert_eq!(bins, ["audit-manager"], "{build}");
    for forbidden in [
        "--bins",
        "--all-targets",
        "--workspace",
        "--all",
        "-p",
        "--package",
        "--examples",
        "--features",
        "--all-features",
    ] {
        assert!(
            !args.contains(&forbidden),
            "{build}: must not use {forbidden}"
        );
    }
    assert!(
        !dockerfile.contains("audit-loadgen"),
        "the image must not ship the load generator"
    );
}

#[test]
fn the_runtime_stage_copies_only_the_service_binary() {
    let dockerfile = read("Dockerfile");
    let stages = stages(&dockerfile);
    assert!(stages.len() >= 2, "a build stage and a runtime stage");
    let runtime = stages.last().expect("runtime stage");
    let from_build: Vec<&String> = runtime
        .iter()
        .filter(|i| i.starts_with("COPY") && i.contains("--from="))
        .collect();
    assert_eq!(
        from_build.len(),
        1,
        "one COPY from the build stage: {from_build:?}"
    );
    let words: Vec<&str> = from_build[0]
        .split_whitespace()
        .filter(|w| !w.starts_with("--"))
        .collect();
    // COPY <sources...> <destination>
    let sources = &words[1..words.len() - 1];
    assert_eq!(sources.len(), 1, "{}", from_build[0]);
    assert!(sources[0].ends_with("/audit-manager"), "{}", from_build[0]);
    let entry = runtime
        .iter()
        .find(|i| i.starts_with("ENTRYPOINT"))
        .expect("ENTRYPOINT");
    assert!(entry.contains("\"audit-manager\""), "{entry}");
}

#[test]
fn the_git_commit_is_a_build_argument_that_reaches_the_build() {
    let dockerfile = read("Dockerfile");
    let stages = stages(&dockerfile);
    let build_stage = stages
        .iter()
        .find(|s| s.iter().any(|i| i.contains("cargo build")))
        .expect("build stage");
    assert!(
        build_stage.iter().any(|i| i.starts_with("ARG GIT_COMMIT")),
        "ARG GIT_COMMIT in the build stage: {build_stage:?}"
    );
    let build = build_stage
        .iter()
        .find(|i| i.contains("cargo build"))
        .expect("cargo build");
    assert!(build.contains("GIT_COMMIT=\"$GIT_COMMIT\""), "{build}");
    assert!(
        read("build.rs").contains("\"GIT_COMMIT\""),
        "build.rs reads GIT_COMMIT"
    );
    // .git is not in the context, which is why the argument is needed at all.
    assert!(read(".dockerignore").lines().any(|l| l.trim() == ".git/"));
}

#[test]
fn the_service_crate_does_not_carry_the_load_generator() {
    let manifest = read("Cargo.toml");
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("[dependencies]");
    for name in ["hdrhistogram", "reqwest", "tower", "tower-http"] {
        assert!(
            !deps
                .lines()
                .any(|l| l.split('=').next().map(str::trim) == Some(name)),
            "{name} is not a dependency of the service"
        );
    }
    assert!(
        !Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/bin")
            .exists()
    );
    assert!(manifest.contains("members = [\"bench/loadgen\"]"));
}
