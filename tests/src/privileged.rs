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
    unmet(test, &missing.join("; "))
}

/// [`check`], and the given programs are installed (keepalived, tshark, ...).
pub fn check_tools(test: &str, tools: &[&str]) -> bool {
    if !check(test) {
        return false;
    }
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| which(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    unmet(
        test,
        &format!(
            "{} not installed (run `cargo xtask setup`)",
            missing.join(", ")
        ),
    )
}

/// A precondition of privileged test `test` is not met, for reason `why`: panics under
/// `ROBUSTIFIER_REQUIRE_PRIVILEGED=1`, says loudly that the test skips otherwise. Returns
/// false (the test may not go on).
pub fn unmet(test: &str, why: &str) -> bool {
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
