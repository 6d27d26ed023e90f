//! Log output of every subcommand, on stderr: text for people, with ANSI colours only when
//! stderr is a terminal (a file or a journal gets no escape codes), or one JSON object per
//! line for log collectors. A session's lines carry its id as a `session` field
//! (`"fields":{"session":..}`), so a collector can follow one session by its id. With
//! `RUST_LOG=debug` they also carry the session's span (`"span":{"name":"session","id":..,
//! "service":..,"peer":..}`); at other levels there is no span, as entering one at every
//! poll of a session cost several per cent of a session's CPU.
//!
//! Each line is one `write(2)` to stderr, unbuffered, so that a line is never lost in a
//! buffer when the process dies. Sessions write no line at the default level (a relayed
//! message is counted in the statistics, and logged at debug level), so this costs the
//! session path nothing.

use std::io::IsTerminal as _;

use tracing::Subscriber;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// The level filter: `RUST_LOG` if set, else `info`.
fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The subscriber writing `format` to `writer`; `ansi` only matters for text.
pub fn subscriber<W>(format: Format, writer: W, ansi: bool) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let b = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(filter())
        // A failed write would otherwise be reported with `eprintln!`, which panics when
        // stderr is a closed pipe: a daemon must outlive the reader of its logs.
        .log_internal_errors(false);
    match format {
        Format::Text => Box::new(b.with_ansi(ansi).finish()),
        Format::Json => Box::new(
            b.json()
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
    }
}

/// Installs the process's subscriber on stderr.
pub fn init(format: Format) {
    let s = subscriber(format, std::io::stderr, std::io::stderr().is_terminal());
    // Only fails if a subscriber is already set, which then keeps logging.
    let _ = tracing::subscriber::set_global_default(s);
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    fn text(buf: &Buf) -> String {
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    /// Logs the way a session does: an event naming its session, inside the `session`
    /// span of `front::accept` (a debug span), whose id comes from `session_id()`.
    fn log_a_session(s: Box<dyn Subscriber + Send + Sync>) -> String {
        let id = crate::front::accept::session_id();
        tracing::subscriber::with_default(s, || {
            let span = tracing::debug_span!("session", id = %id, service = "smtp", peer = %"198.18.0.1:4000");
            let _g = span.enter();
            tracing::info!(session = %id, reply = 250, "message accepted");
        });
        id
    }

    #[test]
    fn json_lines_parse_and_carry_the_session_id() {
        let buf = Buf::default();
        let id = log_a_session(subscriber(Format::Json, buf.clone(), true));
        let out = text(&buf);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["fields"]["session"], id.as_str(), "{v}");
        assert_eq!(v["fields"]["message"], "message accepted", "{v}");
        assert_eq!(v["fields"]["reply"], 250, "{v}");
        assert_eq!(v["level"], "INFO");
        assert!(!out.contains('\x1b'), "no escape codes in JSON");
    }

    #[test]
    fn text_has_colours_only_when_asked() {
        let plain = Buf::default();
        let id = log_a_session(subscriber(Format::Text, plain.clone(), false));
        let out = text(&plain);
        assert!(
            out.contains(&id) && out.contains("message accepted"),
            "{out}"
        );
        assert!(!out.contains('\x1b'), "{out:?}");
        let coloured = Buf::default();
        log_a_session(subscriber(Format::Text, coloured.clone(), true));
        assert!(text(&coloured).contains('\x1b'));
    }
}
