//! The XDP attachment passed from a process to its successor (binary upgrade).
//!
//! An interface holds one XDP link; a second attach is refused while the first exists, and
//! detaching first would leave the interface unfiltered for a moment. So the running
//! process pins its link in the pin directory, the successor opens the pin and swaps its
//! own program into the link (`bpf_link_update`, atomic: every packet meets one program or
//! the other), and the pin is removed once the successor holds the link. The steering
//! program needs none of this: several sk_lookup programs may run on a network namespace,
//! so the successor attaches its own and the predecessor detaches its one afterwards.

use std::path::Path;

use aya::programs::{
    Xdp,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use robustifier_common::PROG_XDP;
use tracing::{info, warn};

use super::{DataPath, DataPathError};

/// Where a running process pins its XDP link for a successor, in its pin directory.
pub const XDP_LINK_PIN: &str = "rb_xdp_link_succession";

fn failed(link: &Path, reason: impl std::fmt::Display) -> DataPathError {
    DataPathError::Succession {
        link: link.to_owned(),
        reason: reason.to_string(),
    }
}

impl DataPath {
    /// Pins this process's XDP link at `pin` for a successor; returns the interface it is
    /// attached to, or `None` when no XDP program is attached. The link keeps running this
    /// process's program until the successor takes it.
    pub fn pass_xdp(&mut self, pin: &Path) -> Result<Option<String>, DataPathError> {
        if self.xdp_passed.is_some() {
            return Err(failed(pin, "already passed to another successor"));
        }
        let Some((iface, id)) = self.xdp_link.take() else {
            return Ok(None);
        };
        let prog: &mut Xdp = self.program(PROG_XDP)?;
        let link = prog.take_link(id).map_err(|e| failed(pin, e))?;
        // A link made over netlink (kernels before 5.9) has no file descriptor to pass;
        // it goes away with this process, so it stays with it.
        let fd = match FdLink::try_from(link) {
            Ok(fd) => fd,
            Err(e) => return Err(failed(pin, format!("not a bpf link: {e}"))),
        };
        // A pin left by a successor attempt that died is stale.
        let _ = std::fs::remove_file(pin);
        let pinned = fd.pin(pin).map_err(|e| failed(pin, e))?;
        info!(iface, pin = %pin.display(), "XDP link pinned for the successor");
        self.xdp_passed = Some((iface.clone(), pinned));
        Ok(Some(iface))
    }

    /// The successor did not take over: the passed link comes back under this process's
    /// program (the successor may have swapped its own in before it gave up).
    pub fn keep_xdp(&mut self) -> Result<(), DataPathError> {
        let Some((iface, pinned)) = self.xdp_passed.take() else {
            return Ok(());
        };
        let fd = pinned
            .unpin()
            .map_err(|e| failed(Path::new(XDP_LINK_PIN), e))?;
        let link = XdpLink::try_from(fd).map_err(|e| failed(Path::new(XDP_LINK_PIN), e))?;
        let prog: &mut Xdp = self.program(PROG_XDP)?;
        let id = prog
            .attach_to_link(link)
            .map_err(|e| failed(Path::new(XDP_LINK_PIN), e))?;
        info!(iface, "XDP link kept: the successor did not take over");
        self.xdp_link = Some((iface, id));
        Ok(())
    }

    /// The successor holds the link now: the pin goes, and with this process's handle the
    /// link stays the successor's alone.
    pub fn xdp_taken(&mut self) {
        if let Some((iface, pinned)) = self.xdp_passed.take()
            && let Err(e) = pinned.unpin()
        {
            warn!(iface, error = %e, "removing the XDP link's succession pin failed");
        }
    }

    /// Takes the XDP link a predecessor pinned at `pin` on `iface`: this process's program
    /// replaces the predecessor's in it, atomically. The pin stays until the predecessor
    /// hears that the successor took over (see [`DataPath::xdp_taken`]).
    pub fn take_xdp(&mut self, iface: &str, pin: &Path) -> Result<(), DataPathError> {
        let fd: FdLink = PinnedLink::from_pin(pin)
            .map_err(|e| failed(pin, e))?
            .into();
        let link = XdpLink::try_from(fd).map_err(|e| failed(pin, e))?;
        let prog: &mut Xdp = self.program(PROG_XDP)?;
        let id = prog.attach_to_link(link).map_err(|e| failed(pin, e))?;
        info!(
            iface,
            program = PROG_XDP,
            "XDP link taken over from the predecessor"
        );
        self.xdp_link = Some((iface.to_owned(), id));
        Ok(())
    }
}

/// Removes a succession pin that no process will take (both processes of an upgrade died
/// in between): while it exists the interface keeps an XDP link nobody owns.
pub fn clear_stale_pin(pin: &Path) {
    if pin.exists() {
        match std::fs::remove_file(pin) {
            Ok(()) => warn!(pin = %pin.display(), "removed a stale XDP succession pin"),
            Err(e) => {
                warn!(pin = %pin.display(), error = %e, "cannot remove a stale XDP succession pin")
            }
        }
    }
}
