use std::io::Write as _;

use super::*;
use crate::manager::testing::TestDir;

const SENT: &str = "2026-11-30T08:00:01.000000+00:00 mx1 postfix/smtp[4242]: 4ABC123DEF: to=<b@example.org>, relay=local, status=sent (delivered)";

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn ids(b: &Batch) -> Vec<&str> {
    b.lines.iter().map(|l| l.queue_id.as_str()).collect()
}

#[test]
fn postfix_lines_with_a_queue_id_are_kept() {
    assert_eq!(queue_id(SENT, Mta::Postfix).as_deref(), Some("4ABC123DEF"));
    assert_eq!(
        queue_id(
            "Nov 30 08:00:00 mx1 postfix/cleanup[7]: 4XyZ1k2Lmnz9: message-id=<a@b>",
            Mta::Postfix
        )
        .as_deref(),
        Some("4XyZ1k2Lmnz9")
    );
    for other in [
        "Nov 30 08:00:00 mx1 postfix/smtpd[7]: NOQUEUE: reject: RCPT from x",
        "Nov 30 08:00:00 mx1 postfix/smtpd[7]: warning: hostname x does not resolve",
        "Nov 30 08:00:00 mx1 postfix/smtpd[7]: connect from x[198.18.0.1]",
        "Nov 30 08:00:00 mx1 dovecot: imap-login: Login: user=<a>",
    ] {
        assert_eq!(queue_id(other, Mta::Postfix), None, "{other}");
    }
}

#[test]
fn exim_and_opensmtpd_lines_with_a_queue_id_are_kept() {
    assert_eq!(
        queue_id(
            "2026-11-30 08:00:00 1tAbCd-000Xyz-9Q <= a@example.org H=x [198.18.0.1] S=300",
            Mta::Exim
        )
        .as_deref(),
        Some("1tAbCd-000Xyz-9Q")
    );
    assert_eq!(
        queue_id("2026-11-30 08:00:00 Start queue run: pid=1", Mta::Exim),
        None
    );
    assert_eq!(
        queue_id(
            "Nov 30 08:00:00 mx1 smtpd[1]: 3c1d smtp message msgid=3f1a2b3c size=300 nrcpt=1 proto=ESMTP",
            Mta::Opensmtpd
        )
        .as_deref(),
        Some("3f1a2b3c")
    );
    // As `smtpd -d` writes them, and with a syslog prefix and `0x`.
    for line in [
        "94f6d548671421b5 mda delivery evpid=3f1a2b3c8701c50d from=<a@b> to=<c@d> rcpt=<c@d> user=mail delay=0s result=Ok stat=Delivered",
        "Nov 30 08:00:01 mx1 smtpd[1]: 3c1d mda delivery evpid=0x3f1a2b3c00112233 from=<a@b> result=Ok",
    ] {
        assert_eq!(
            queue_id(line, Mta::Opensmtpd).as_deref(),
            Some("3f1a2b3c"),
            "{line}"
        );
    }
    assert_eq!(
        queue_id(
            "94f6d5c9ac684b39 smtp connected address=198.18.1.1 host=<unknown>",
            Mta::Opensmtpd
        ),
        None
    );
}

#[test]
fn the_follower_reads_complete_lines_across_rotation_and_truncation() {
    let dir = TestDir::new("maillog-rotate");
    let path = dir.join("maillog");
    let mut f = Follower::new(&path, Mta::Postfix);
    assert!(f.poll(100).unwrap().lines.is_empty(), "no file yet");
    append(
        &path,
        "x postfix/smtpd[1]: AAAAAA: client=x\nnoise\nx postfix/qmgr[2]: BBBBBB: fr",
    );
    let b = f.poll(100).unwrap();
    assert_eq!(ids(&b), ["AAAAAA"], "the unfinished line waits");
    append(&path, "om=<a@b>\n");
    assert_eq!(ids(&f.poll(100).unwrap()), ["BBBBBB"]);
    // Rotation: the old file gets one more line after its rename, then a new file starts.
    std::fs::rename(&path, dir.join("maillog.1")).unwrap();
    append(
        &dir.join("maillog.1"),
        "x postfix/smtp[3]: CCCCCC: status=sent\n",
    );
    append(&path, "x postfix/smtp[3]: DDDDDD: status=sent\n");
    assert_eq!(ids(&f.poll(100).unwrap()), ["CCCCCC"], "the old file first");
    let b = f.poll(100).unwrap();
    assert_eq!(ids(&b), ["DDDDDD"]);
    let new_id = b.file;
    // Truncation: the same file, shorter than where the follower stood.
    std::fs::write(&path, "x postfix/smtp[3]: EEEEEE: x\n").unwrap();
    let b = f.poll(100).unwrap();
    assert_eq!(ids(&b), ["EEEEEE"]);
    assert_eq!(b.file, new_id);
    assert!(f.poll(100).unwrap().lines.is_empty());
}

#[test]
fn resuming_at_a_mark_skips_what_was_stored_and_a_batch_is_bounded() {
    let dir = TestDir::new("maillog-resume");
    let path = dir.join("maillog");
    let lines: String = (0..10)
        .map(|i| format!("x postfix/smtp[3]: {:06X}: status=sent\n", 0xA00000 + i))
        .collect();
    append(&path, &lines);
    let mut f = Follower::new(&path, Mta::Postfix);
    let first = f.poll(4).unwrap();
    assert_eq!(first.lines.len(), 4);
    let mark = FileMark {
        dev: first.file.0,
        ino: first.file.1,
        offset: first.lines[3].end,
    };
    // A restarted agent goes on from the manager's mark.
    let mut again = Follower::new(&path, Mta::Postfix);
    again.resume(mark).unwrap();
    let rest = again.poll(100).unwrap();
    assert_eq!(rest.lines.len(), 6);
    assert_eq!(rest.lines[0].queue_id, "A00004");
    // A mark of another file (rotated away meanwhile) starts from the beginning.
    let mut other = Follower::new(&path, Mta::Postfix);
    other
        .resume(FileMark {
            dev: mark.dev,
            ino: mark.ino + 1,
            offset: mark.offset,
        })
        .unwrap();
    assert_eq!(other.poll(100).unwrap().lines.len(), 10);
}

#[test]
fn a_long_line_is_cut() {
    let dir = TestDir::new("maillog-long");
    let path = dir.join("maillog");
    append(
        &path,
        &format!(
            "x postfix/smtp[3]: ABCDEF: {}\n",
            "y".repeat(3 * READ_CHUNK)
        ),
    );
    let mut f = Follower::new(&path, Mta::Postfix);
    let b = f.poll(100).unwrap();
    assert_eq!(b.lines.len(), 1);
    assert_eq!(b.lines[0].line.len(), MAX_LINE);
    assert!(f.poll(100).unwrap().lines.is_empty());
}
