//! A front-end's pinned maps as `robustifier maps --json` prints them: what an operator
//! sees, read the way an operator's script would.

use std::path::Path;

/// `robustifier maps --json --pin-dir <pin_dir>`, parsed.
pub fn json(pin_dir: &Path) -> serde_json::Value {
    let out = crate::cli::ok([
        "maps".as_ref(),
        "--json".as_ref(),
        "--pin-dir".as_ref(),
        pin_dir.as_os_str(),
    ]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("robustifier maps --json: {e}:\n{out}"))
}

/// The back-end rows of [`json`].
pub fn backends(pin_dir: &Path) -> Vec<serde_json::Value> {
    let maps = json(pin_dir);
    maps["backends"]
        .as_array()
        .unwrap_or_else(|| panic!("no backends in robustifier maps --json: {maps:#}"))
        .clone()
}

/// Every back-end's (address, state) in the load map.
pub fn backend_states(pin_dir: &Path) -> Vec<(String, String)> {
    backends(pin_dir)
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap_or_default().to_owned(),
                b["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}
