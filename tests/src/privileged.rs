//! Preconditions of privileged tests. Under `cargo xtask test` and in CI
//! (`ROBUSTIFIER_REQUIRE_PRIVILEGED=1`) a missing precondition fails the test with the
//! reason; elsewhere the test says loudly that it skips and why.

/// Returns true when the test may go on; panics or reports a skip otherwise.
pub fn check(test: &str) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("not running as root".to_owned());
    }
    for tool in ["ip", "nsenter", "bpftool"] {
        if which(tool).is_none() {
            missing.push(format!("`{tool}` not found (run `cargo xtask setup`)"));
        }
    }
    let bin = crate::robustifier_bin();
    if !bin.is_file() {
        missing.push(format!(
            "{} missing (build it: `cargo build -p robustifier`, or run `cargo xtask test`)",
            bin.display()
        ));
    }
    if missing.is_empty() {
        return true;
    }
    let why = missing.join("; ");
    if std::env::var_os("ROBUSTIFIER_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        panic!("privileged test {test} cannot run: {why}");
    }
    eprintln!(
        "SKIPPED privileged test {test}: {why} (set ROBUSTIFIER_REQUIRE_PRIVILEGED=1 to fail instead)"
    );
    false
}

pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
