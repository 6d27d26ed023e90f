//! One minute's record, as kept, logged, served and shipped to the manager.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::counters::Totals;

/// One minute of a front-end: what each key added during it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minute {
    /// The front-end's name (at the manager: the member's).
    #[serde(default)]
    pub member: String,
    /// The unix minute covered (unix seconds / 60).
    pub minute: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, Totals>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backends: BTreeMap<String, Totals>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pools: BTreeMap<String, Totals>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, Totals>,
    /// The XDP program's verdicts during the minute (none without XDP).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xdp: BTreeMap<String, u64>,
}
