//! The lab's radius directory.
