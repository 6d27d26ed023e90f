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
//!
//! Under systemd with stderr on the journal (`JOURNAL_STREAM`), text lines carry neither
//! a timestamp nor colours: journald stamps each line itself.

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

/// Where the text lines go: a terminal (colours), the journal (no timestamps, no colours),
/// or anything else (a file, a pipe: timestamps, no colours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Terminal,
    Journal,
    Plain,
}

/// The subscriber writing `format` to `writer`; `ansi` only matters for text.
pub fn subscriber<W>(format: Format, writer: W, ansi: bool) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let sink = if ansi { Sink::Terminal } else { Sink::Plain };
    subscriber_for(format, writer, sink)
}

/// The subscriber writing `format` to `writer`, shaped for `sink`.
pub fn subscriber_for<W>(format: Format, writer: W, sink: Sink) -> Box<dyn Subscriber + Send + Sync>
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
        Format::Text if sink == Sink::Journal => {
            Box::new(b.with_ansi(false).without_time().finish())
        }
        Format::Text => Box::new(b.with_ansi(sink == Sink::Terminal).finish()),
        Format::Json => Box::new(
            b.json()
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
    }
}

/// Whether stderr is the journal stream systemd named in `JOURNAL_STREAM` (`DEV:INODE`);
/// a child that inherited the variable but writes elsewhere is not on the journal.
fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// Installs the process's subscriber on stderr.
pub fn init(format: Format) {
    let stderr = std::io::stderr();
    let sink = if stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref()) {
        Sink::Journal
    } else if stderr.is_terminal() {
        Sink::Terminal
    } else {
        Sink::Plain
    };
    let s = subscriber_for(format, std::io::stderr, sink);
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

    #[test]
    fn journal_lines_have_no_timestamp_and_no_colours() {
        let plain = Buf::default();
        log_a_session(subscriber_for(Format::Text, plain.clone(), Sink::Plain));
        let journal = Buf::default();
        log_a_session(subscriber_for(Format::Text, journal.clone(), Sink::Journal));
        let (plain, journal) = (text(&plain), text(&journal));
        // A plain line starts with its RFC 3339 timestamp (`2026-...`), a journal line
        // with its level.
        assert!(plain.starts_with(|c: char| c.is_ascii_digit()), "{plain:?}");
        assert!(journal.trim_start().starts_with("INFO"), "{journal:?}");
        assert!(!journal.contains('\x1b'), "{journal:?}");
        // JSON keeps its shape whatever the sink.
        let json = Buf::default();
        log_a_session(subscriber_for(Format::Json, json.clone(), Sink::Journal));
        let v: serde_json::Value = serde_json::from_str(text(&json).trim()).unwrap();
        assert_eq!(v["fields"]["message"], "message accepted");
    }

    #[test]
    fn only_the_named_stream_is_the_journal() {
        assert!(!stderr_is_journal(None));
        assert!(!stderr_is_journal(Some("garbage")));
        assert!(!stderr_is_journal(Some("1:1")));
        let st = nix::sys::stat::fstat(std::io::stderr()).unwrap();
        assert!(stderr_is_journal(Some(&format!(
            "{}:{}",
            st.st_dev, st.st_ino
        ))));
    }
}
