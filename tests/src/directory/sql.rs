//! The lab's sql directory.
