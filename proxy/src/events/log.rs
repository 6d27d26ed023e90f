//! Records as JSON lines in a file, rotated by size: `events.jsonl` (or another name, such
//! as the statistics' `stats.jsonl`), then `events.jsonl.1` (the previous one) up to
//! `events.jsonl.N-1`, so the log never takes more than `files` times `max_bytes` however
//! many records come.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
};

use tracing::warn;

use serde::Serialize;

/// The smallest file worth rotating: one event with long names fits many times.
pub const MIN_BYTES: u64 = 4096;

pub struct JsonLog {
    path: PathBuf,
    max_bytes: u64,
    files: u32,
    file: Option<File>,
    size: u64,
    /// The last write error, logged once until writing works again.
    failing: Option<String>,
}

impl JsonLog {
    /// Appends to `dir/events.jsonl` (created if absent); at most `files` files (at least
    /// 1) of at most `max_bytes` each (at least [`MIN_BYTES`]).
    pub fn open(dir: &Path, max_bytes: u64, files: u32) -> std::io::Result<JsonLog> {
        JsonLog::open_named(dir, "events.jsonl", max_bytes, files)
    }

    /// [`JsonLog::open`] for the file `name` in `dir`.
    pub fn open_named(
        dir: &Path,
        name: &str,
        max_bytes: u64,
        files: u32,
    ) -> std::io::Result<JsonLog> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(name);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(JsonLog {
            path,
            max_bytes: max_bytes.max(MIN_BYTES),
            files: files.max(1),
            file: Some(file),
            size,
            failing: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record; a failure is logged (once) and the record stays in memory only.
    pub fn write(&mut self, event: &impl Serialize) {
        let mut line = match serde_json::to_vec(event) {
            Ok(l) => l,
            Err(e) => return self.failed(format!("encoding: {e}")),
        };
        line.push(b'\n');
        // A line longer than a whole file still goes in, alone in its file.
        if self.size > 0
            && self.size + line.len() as u64 > self.max_bytes
            && let Err(e) = self.rotate()
        {
            return self.failed(format!("rotating: {e}"));
        }
        let Some(file) = self.file.as_mut() else {
            return self.failed("no file open".into());
        };
        match file.write_all(&line) {
            Ok(()) => {
                self.size += line.len() as u64;
                self.failing = None;
            }
            Err(e) => self.failed(e.to_string()),
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        if self.files == 1 {
            std::fs::remove_file(&self.path)?;
        } else {
            // The oldest goes; each other moves up one.
            let _ = std::fs::remove_file(numbered(self.files - 1));
            for n in (1..self.files - 1).rev() {
                let from = numbered(n);
                if from.exists() {
                    std::fs::rename(&from, numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?,
        );
        self.size = 0;
        Ok(())
    }

    fn failed(&mut self, why: String) {
        if self.failing.as_ref() != Some(&why) {
            warn!(file = %self.path.display(), error = %why, "log file not written");
            self.failing = Some(why);
        }
    }
}
