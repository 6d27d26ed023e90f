//! Robustifier's kernel programs.
//!
//! - [`xdp`]: on the service interface, classify every packet, count it, drop floods.
//! - [`steer`]: per new connection (sk_lookup), pick the proxy socket that accepts it.
//!
//! Mail is never parsed here: SMTP and POP3 are server-speaks-first, so nothing about a
//! user or recipient is visible before the proxy has talked to the client.
#![no_std]
#![no_main]
// Every unsafe block says what makes it sound.
#![deny(clippy::undocumented_unsafe_blocks)]

mod maps;
mod parse;
mod steer;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// SAFETY: the loader reads the license from the `license` section by that symbol name; no
// other item in the program is named LICENSE, so the unmangled name cannot clash.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
