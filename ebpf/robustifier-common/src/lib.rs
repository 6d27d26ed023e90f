//! The map contract between Robustifier's kernel programs and user space.
//!
//! Every type here is a BPF map key or value: `#[repr(C)]`, integers and byte arrays only
//! (no `bool`, enum or `Option`), explicit padding, and a compile-time size check so that a
//! layout change on one side cannot go unnoticed on the other. Addresses and ports are kept
//! in network byte order and say so in their field names (`_be`); everything else is in host
//! byte order. IPv4 addresses are stored as IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`)
//! wherever a key must hold either family, so one map serves both.
#![no_std]
#![deny(unsafe_code)]

pub mod names;
pub mod types;

pub use names::*;
pub use types::*;
