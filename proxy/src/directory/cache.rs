//! The positive and negative cache of one directory.
