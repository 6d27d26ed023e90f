//! What the manager's tests share: a folder for one test, removed when dropped (stores,
//! certificates and members' files live on disk), and configuration texts.

use std::path::{Path, PathBuf};

pub struct TestDir(PathBuf);

impl TestDir {
    /// A fresh folder for test `tag` (unique across the crate's tests: the module and the
    /// test, such as `journal-reopen`).
    pub fn new(tag: &str) -> TestDir {
        let dir = std::env::temp_dir().join(format!("robustifier-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The shared part of the test configurations: one SMTP service admitting `max`
/// connections and one pool, so that versions differ by one key.
fn shared(max: u64) -> String {
    format!(
        r#"
[[service]]
name = "smtp"
protocol = "smtp"
port = 25
vips = ["198.18.0.25"]
max_connections = {max}

[[pool]]
name = "store"
identity = "none"
backend = [{{ name = "x", address = "198.19.0.11:25" }}]
"#
    )
}

/// One front-end's configuration (front-end fe-a).
pub fn single(max: u64) -> String {
    format!(
        "[frontend]\nname = \"fe-a\"\ninterface = \"eth0\"\n{}",
        shared(max)
    )
}

/// A cluster of fe1 (on eth1) and fe2 (on `iface`).
pub fn cluster(max: u64, iface: &str) -> String {
    format!(
        "[frontend]\nname = \"x\"\n{}\n[members.fe1]\nfrontend = {{ interface = \"eth1\" }}\n\n[members.fe2]\nfrontend = {{ interface = \"{iface}\" }}\n",
        shared(max)
    )
}
