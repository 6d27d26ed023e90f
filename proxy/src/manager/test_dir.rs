//! A folder for one test of the manager's, removed when dropped (its stores, certificates
//! and members' files live on disk).

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
