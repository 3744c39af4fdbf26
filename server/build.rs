//! Records the git commit of the build (COBB_GIT_COMMIT), which promotions and audit events
//! carry as the code version (outside a git checkout it is `unknown`), and the Burn version the
//! workspace's workers train with, from Cargo.lock (COBB_BURN_VERSION), for the study report.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    println!("cargo:rustc-env=COBB_GIT_COMMIT={commit}{}", if dirty { "-dirty" } else { "" });
    let lock = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    let burn = std::fs::read_to_string(&lock)
        .ok()
        .and_then(|text| {
            let mut lines = text.lines();
            while let Some(line) = lines.next() {
                if line == "name = \"burn\"" {
                    return lines.next().and_then(|v| v.strip_prefix("version = \"")).map(|v| v.trim_end_matches('"').to_owned());
                }
            }
            None
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=COBB_BURN_VERSION={burn}");
    println!("cargo:rerun-if-changed={}", lock.display());
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/refs/heads");
        println!("cargo:rerun-if-changed={dir}/index");
    }
}
