//! The configuration (`Config::parse`): any text either parses or yields an error that
//! names a file and gives a one-line reason (what `robustifier check-config` prints);
//! never a panic. Files the text refers to are looked up under a directory that does not
//! exist, so the target reads nothing from disk unless the text names absolute paths.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use robustifier::config::Config;

fuzz_target!(|text: &str| {
    let file = Path::new("/nonexistent/robustifier-fuzz/robustifier.toml");
    if let Err(e) = Config::parse(file, text) {
        assert_eq!(e.file, file);
        assert!(
            !e.reason.contains('\n'),
            "multi-line reason: {:?}",
            e.reason
        );
    }
});
