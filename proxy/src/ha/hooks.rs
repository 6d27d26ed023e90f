//! The state the accept loops share with the VRRP runtime, kept apart from the runtime
//! so the sessions' side can hold it without depending on the sockets and routers.

use super::{gate::Gate, health::Health};

/// What the proxy side shares with HA: the drain gate its accept loops consult and the
/// health it reports. Cheap to clone; the default is "nothing draining, nothing known".
#[derive(Clone, Default)]
pub struct Hooks {
    pub gate: Gate,
    pub health: Health,
    /// The daemon's supervised background tasks, reported by `status`.
    pub tasks: crate::supervise::Registry,
    /// Where VRRP transitions are recorded as events.
    pub events: crate::events::Events,
}
