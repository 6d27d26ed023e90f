//! The release this binary reports: the crate's version and, when the binary was stamped
//! with one, a build id (`0.1.0+b42`).
//!
//! The build id lives in a fixed-size static behind a marker, so that a packager (or a
//! test) can stamp a built binary without compiling it again: a package's version and the
//! version its binary reports then match, and the manager can tell which package a member
//! runs. The static is read through `black_box`, so the compiler cannot fold the empty
//! id built into the source; the marker is kept masked everywhere else, so that it occurs
//! once in the binary.

/// The marker that precedes the id, each byte XOR [`MASK`].
const MASKED_MARKER: [u8; MARKER_LEN] = mask(*b"robustifier-build-id:v1:");
const MASK: u8 = 0x5a;
const MARKER_LEN: usize = 24;
/// Room for the id after the marker (NUL-padded).
pub const ID_LEN: usize = 40;

const fn mask(mut m: [u8; MARKER_LEN]) -> [u8; MARKER_LEN] {
    let mut i = 0;
    while i < MARKER_LEN {
        m[i] ^= MASK;
        i += 1;
    }
    m
}

#[used]
static STAMP: [u8; MARKER_LEN + ID_LEN] = {
    let plain = mask(MASKED_MARKER);
    let mut s = [0u8; MARKER_LEN + ID_LEN];
    let mut i = 0;
    while i < MARKER_LEN {
        s[i] = plain[i];
        i += 1;
    }
    s
};

/// This binary's build id, empty when it was not stamped.
pub fn build_id() -> String {
    let stamp: &[u8; MARKER_LEN + ID_LEN] = std::hint::black_box(&STAMP);
    parse_id(&stamp[MARKER_LEN..]).unwrap_or_default()
}

/// The release: `CARGO_PKG_VERSION`, with `+ID` when stamped.
pub fn release() -> String {
    let id = build_id();
    if id.is_empty() {
        env!("CARGO_PKG_VERSION").to_owned()
    } else {
        format!("{}+{id}", env!("CARGO_PKG_VERSION"))
    }
}

fn parse_id(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let id = std::str::from_utf8(&bytes[..end]).ok()?;
    valid_id(id).then(|| id.to_owned())
}

/// Letters, digits and `.~`: what a Debian version may carry after a `+`.
fn valid_id(id: &str) -> bool {
    id.len() <= ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'~')
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StampError {
    #[error("build id {0:?}: at most {ID_LEN} letters, digits, '.' or '~'")]
    BadId(String),
    #[error("the binary holds no build id marker")]
    NoMarker,
    #[error("the binary holds the build id marker more than once")]
    Ambiguous,
}

/// Stamps `id` into a binary's bytes (the copy of a built `robustifier`).
pub fn stamp(binary: &mut [u8], id: &str) -> Result<(), StampError> {
    if !valid_id(id) {
        return Err(StampError::BadId(id.to_owned()));
    }
    let marker = mask(MASKED_MARKER);
    let mut found = binary
        .windows(MARKER_LEN)
        .enumerate()
        .filter(|(_, w)| *w == marker)
        .map(|(i, _)| i);
    let at = found.next().ok_or(StampError::NoMarker)?;
    if found.next().is_some() {
        return Err(StampError::Ambiguous);
    }
    let slot = binary
        .get_mut(at + MARKER_LEN..at + MARKER_LEN + ID_LEN)
        .ok_or(StampError::NoMarker)?;
    slot.fill(0);
    slot[..id.len()].copy_from_slice(id.as_bytes());
    Ok(())
}

/// Whether a member reporting `release` runs the package of Debian version `version`: the
/// same, or the same but for the package's Debian revision (`0.1.0-1` is release `0.1.0`).
pub fn runs(version: &str, release: &str) -> bool {
    !release.is_empty()
        && (version == release
            || version
                .rsplit_once('-')
                .is_some_and(|(upstream, _)| upstream == release))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unstamped_binary_reports_the_crate_version() {
        assert_eq!(build_id(), "");
        assert_eq!(release(), env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn a_stamp_lands_after_the_one_marker() {
        let mut bin = vec![7u8; 100];
        bin.extend_from_slice(&STAMP);
        bin.extend_from_slice(&[9u8; 50]);
        stamp(&mut bin, "lab2").unwrap();
        assert_eq!(
            parse_id(&bin[100 + MARKER_LEN..164]).as_deref(),
            Some("lab2")
        );
        assert_eq!(
            &bin[164..],
            &[9u8; 50][..],
            "nothing after the slot changes"
        );
        assert_eq!(stamp(&mut bin, "a b"), Err(StampError::BadId("a b".into())));
        assert_eq!(stamp(&mut [0u8; 80], "x"), Err(StampError::NoMarker));
        let mut twice = [STAMP, STAMP].concat();
        assert_eq!(stamp(&mut twice, "x"), Err(StampError::Ambiguous));
    }

    #[test]
    fn a_package_version_matches_its_release() {
        assert!(runs("0.1.0+lab2", "0.1.0+lab2"));
        assert!(runs("0.1.0-1", "0.1.0"));
        assert!(!runs("0.1.0+lab3", "0.1.0+lab2"));
        assert!(!runs("0.1.0", ""));
    }
}
