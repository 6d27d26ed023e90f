//! How a configuration value reads in a change line: as the operator wrote it where that
//! is possible (`starttls`, `198.18.0.0/24`, `2s`), never as Rust's debug form.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use ipnet::IpNet;
use rustls::pki_types::ServerName;

use crate::{
    config::{Identity, Protocol, RuntimeLayout, ServiceTls, XdpMode},
    vrrp::{Interval, Priority, Vrid},
};

pub trait Show {
    fn show(&self) -> String;
}

macro_rules! by_display {
    ($($t:ty),* $(,)?) => {
        $(impl Show for $t {
            fn show(&self) -> String {
                self.to_string()
            }
        })*
    };
}

by_display!(
    u8, u16, u32, u64, usize, f64, bool, String, IpAddr, SocketAddr, IpNet, Vrid, Priority,
    Interval,
);

impl Show for PathBuf {
    fn show(&self) -> String {
        self.display().to_string()
    }
}

impl Show for Duration {
    /// `2s`, `1.5s`, `500ms`: short and unambiguous (and `0s`, not `0ns`).
    fn show(&self) -> String {
        if self.is_zero() {
            "0s".to_owned()
        } else {
            format!("{self:?}")
        }
    }
}

/// `unset` rather than `none`, which is also a value of `identity` and `tls`.
impl<T: Show> Show for Option<T> {
    fn show(&self) -> String {
        self.as_ref().map_or_else(|| "unset".to_owned(), Show::show)
    }
}

impl<T: Show> Show for [T] {
    fn show(&self) -> String {
        let items: Vec<String> = self.iter().map(Show::show).collect();
        format!("[{}]", items.join(", "))
    }
}

impl<T: Show> Show for Vec<T> {
    fn show(&self) -> String {
        self.as_slice().show()
    }
}

/// A tracked interface and the priority it costs when down.
impl Show for (String, u8) {
    fn show(&self) -> String {
        format!("{}={}", self.0, self.1)
    }
}

impl Show for ServerName<'static> {
    fn show(&self) -> String {
        self.to_str().into_owned()
    }
}

impl Show for XdpMode {
    fn show(&self) -> String {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
        .to_owned()
    }
}

impl Show for RuntimeLayout {
    fn show(&self) -> String {
        match self {
            RuntimeLayout::PerCore => "per-core",
            RuntimeLayout::Multi => "multi",
        }
        .to_owned()
    }
}

impl Show for Protocol {
    fn show(&self) -> String {
        self.as_str().to_owned()
    }
}

impl Show for ServiceTls {
    fn show(&self) -> String {
        match self {
            ServiceTls::None => "none",
            ServiceTls::StartTls => "starttls",
            ServiceTls::Implicit => "implicit",
        }
        .to_owned()
    }
}

impl Show for Identity {
    fn show(&self) -> String {
        match self {
            Identity::None => "none",
            Identity::Xclient => "xclient",
            Identity::ProxyV2 => "proxy",
        }
        .to_owned()
    }
}
