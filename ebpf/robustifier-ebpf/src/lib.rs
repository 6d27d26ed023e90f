//! Empty library target, so that the proxy crate can name this crate as a build-dependency
//! and be rebuilt when it changes; the programs themselves are the `robustifier` binary.
#![no_std]
