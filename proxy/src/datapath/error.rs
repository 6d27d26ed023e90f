//! Errors of the data path: which program, which map, and why.
use std::path::PathBuf;

/// Why the data path could not be set up, with the program, map or path concerned.
#[derive(Debug, thiserror::Error)]
pub enum DataPathError {
    #[error("cannot mount bpffs at {path}: {source}")]
    Mount { path: PathBuf, source: nix::Error },
    #[error("cannot create pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("loading program {name} failed: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("attaching {name} to {target} failed: {source}")]
    Attach {
        name: &'static str,
        target: String,
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("pinned map {path}: {source}")]
    Pinned {
        path: PathBuf,
        source: aya::maps::MapError,
    },
    #[error("cannot open this process's network namespace: {0}")]
    Netns(std::io::Error),
    #[error("passing the XDP attachment between processes ({link}): {reason}")]
    Succession { link: PathBuf, reason: String },
}
