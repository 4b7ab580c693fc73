//! Stamps the build with its git commit and time for `GET /version`.
//!
//! The commit is `$GIT_COMMIT` when set (image builds: the build context has no `.git`, so the
//! Dockerfile passes it as a build argument), else what git says, else "unknown".

use std::process::Command;

fn main() {
    let from_env = std::env::var("GIT_COMMIT")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s != "unknown");
    let commit = from_env.unwrap_or_else(|| git_commit().unwrap_or_else(|| "unknown".to_owned()));
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    println!("cargo:rustc-env=AUDIT_MANAGER_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=AUDIT_MANAGER_BUILD_TIME={}", rfc3339(secs));
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-env-changed=GIT_COMMIT");
}

fn git_commit() -> Option<String> {
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
}

/// UTC RFC 3339 from Unix seconds.
fn rfc3339(secs: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(0), 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
