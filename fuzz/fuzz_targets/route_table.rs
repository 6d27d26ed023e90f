//! Routing maps (`route::table`): parsing never panics; an accepted map refers only to
//! well-formed pool names, and every address key of it is found again by a lookup of the
//! address as the SMTP parser hands it over, and every bare key by a POP3 user lookup.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use robustifier::route::table::{Route, RouteTable};
use robustifier::smtp::command::Command;

fuzz_target!(|text: &str| {
    let Ok(table) = RouteTable::parse(text, Path::new("fuzz.map")) else {
        return;
    };
    for pool in table.pools() {
        assert!(
            !pool.is_empty()
                && pool
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')),
            "{pool:?}"
        );
    }
    for line in text.lines() {
        let fields: Vec<&str> = line
            .split([' ', '\t'])
            .filter(|f| !f.is_empty())
            .take_while(|f| !f.starts_with('#'))
            .collect();
        let Some((&key, pools)) = fields.split_first() else {
            continue;
        };
        let route = match pools {
            [one] if one.eq_ignore_ascii_case("reject") => Route::Reject,
            _ => Route::Pools(pools.iter().map(|p| (*p).to_owned()).collect()),
        };
        if let Some((local, domain)) = key.rsplit_once('@')
            && !key.starts_with('.')
        {
            // The recipient as a client would send it, if the SMTP parser reads it as this
            // very address (not, say, as a source route or a quoted local part).
            let rcpt = format!("RCPT TO:<{key}>");
            if let Ok(Command::Rcpt(r)) = Command::parse(rcpt.as_bytes())
                && r.forward_path.local == local
                && r.forward_path.domain.as_deref() == Some(&domain.to_lowercase())
            {
                assert_eq!(table.lookup(&r.forward_path), Some(&route), "{key:?}");
            }
        } else if key != "*" && !key.starts_with('.') {
            assert_eq!(table.lookup_user(key), Some(&route), "user {key:?}");
        }
    }
});
