//! Every example configuration parses, and `robustifier check-config` refuses a bad one
//! with the file, the key and the reason.

use std::path::Path;

use robustifier::config::Config;
use robustifier_lab::cli;

fn examples() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_config_parses() {
    let files = examples();
    assert!(files.len() >= 2, "config/ holds examples: {files:?}");
    for f in files {
        let cfg = Config::load(&f).unwrap_or_else(|e| panic!("{e}"));
        assert!(!cfg.services.is_empty(), "{}", f.display());
    }
}

#[test]
fn check_config_names_file_key_and_reason() {
    let bin = robustifier_lab::robustifier_bin();
    if !bin.is_file() {
        panic!(
            "{} missing: build it with `cargo build -p robustifier` (cargo xtask test does)",
            bin.display()
        );
    }
    let good = &examples()[0];
    cli::ok(["check-config".as_ref(), good.as_os_str()]);

    let dir = std::env::temp_dir().join(robustifier_lab::unique_prefix("cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    // The example names a routing map beside it.
    let examples_dir = good.parent().unwrap();
    std::fs::copy(examples_dir.join("routes.map"), dir.join("routes.map")).unwrap();
    let text = std::fs::read_to_string(good)
        .unwrap()
        .replace("port = 110", "port = 0");
    std::fs::write(&bad, text).unwrap();
    let out = cli::run(["check-config".as_ref(), bad.as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "{}: service[2].port: must be 1 to 65535",
            bad.display()
        )),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
