//! The DATA scanner (`smtp::data`), fed the input in chunks the fuzzer chooses: what it
//! forwards never holds a bare CR or LF nor an end of data other than the final one (so no
//! back-end, however lenient, can find a second message in it), it forwards the whole
//! message when and only when the message is clean and within the limit, and its results
//! do not depend on the chunking; a whole message loses exactly its lines' leading
//! periods when unstuffed for BDAT.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use robustifier::smtp::data::{DataScanner, Outcome, unstuff};

#[derive(Debug, Arbitrary)]
struct Input {
    limit: u16,
    cuts: Vec<u8>,
    data: Vec<u8>,
}

struct Run {
    forwarded: Vec<u8>,
    consumed: usize,
    outcome: Option<Outcome>,
}

fn run(limit: u64, data: &[u8], cuts: &[u8]) -> Run {
    let mut s = DataScanner::new(limit);
    let mut out = Run {
        forwarded: Vec::new(),
        consumed: 0,
        outcome: None,
    };
    let mut rest = data;
    let mut cuts = cuts.iter().copied().chain(std::iter::repeat(u8::MAX));
    while !rest.is_empty() {
        let n = usize::from(cuts.next().unwrap_or(u8::MAX)).clamp(1, rest.len());
        let (chunk, after) = rest.split_at(n);
        let step = s.feed(chunk);
        assert!(step.forward <= step.consumed && step.consumed <= chunk.len());
        out.forwarded.extend_from_slice(step.replay);
        out.forwarded.extend_from_slice(&chunk[..step.forward]);
        out.consumed += step.consumed;
        if step.outcome.is_some() {
            out.outcome = step.outcome;
            assert_eq!(s.outcome(), step.outcome);
            assert_eq!(s.feed(after).consumed, 0, "data after the end was consumed");
            break;
        }
        assert_eq!(step.consumed, chunk.len());
        rest = after;
    }
    out
}

fuzz_target!(|input: Input| {
    let limit = u64::from(input.limit);
    let chunked = run(limit, &input.data, &input.cuts);
    let one_shot = {
        let mut s = DataScanner::new(limit);
        let step = s.feed(&input.data);
        let mut f = step.replay.to_vec();
        f.extend_from_slice(&input.data[..step.forward]);
        (f, step.consumed, step.outcome)
    };
    assert_eq!(
        (&chunked.forwarded, chunked.consumed, chunked.outcome),
        (&one_shot.0, one_shot.1, one_shot.2),
        "chunking changed the result"
    );

    let f = &chunked.forwarded;
    // Only what the client sent, in order.
    assert!(
        input.data.starts_with(f),
        "forwarded bytes are not a prefix of the input"
    );
    // Every CR is followed by LF, every LF preceded by CR.
    for (i, &b) in f.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(f.get(i + 1), Some(&b'\n'), "bare CR forwarded at {i}"),
            b'\n' => assert!(i > 0 && f[i - 1] == b'\r', "bare LF forwarded at {i}"),
            _ => {}
        }
    }
    // Where a back-end would see an end of data: `.CRLF` at the start or after a CRLF.
    let ends: Vec<usize> = (0..f.len())
        .filter(|&i| f[i..].starts_with(b".\r\n") && (i == 0 || f[..i].ends_with(b"\r\n")))
        .collect();
    match chunked.outcome {
        Some(Outcome::Complete { size }) => {
            assert_eq!(
                f.as_slice(),
                &input.data[..chunked.consumed],
                "clean message cut"
            );
            assert_eq!(ends, [f.len() - 3], "ends of data in a clean message");
            assert!(size <= limit, "size {size} over limit {limit}");
            assert_eq!(size + 3, chunked.consumed as u64);
            // What goes on as BDAT: each line without a leading period.
            let message = &f[..size as usize];
            let mut unstuffed = message.to_vec();
            let n = unstuff(&mut unstuffed);
            let expected: Vec<u8> = message
                .split_inclusive(|&b| b == b'\n')
                .flat_map(|line| line.strip_prefix(b".").unwrap_or(line).iter().copied())
                .collect();
            assert_eq!(&unstuffed[..n], expected.as_slice(), "unstuffed message");
        }
        // A refused message, or one still arriving: the back-end must see no end at all.
        _ => assert_eq!(
            ends, [0usize; 0],
            "end of data forwarded: {:?}",
            chunked.outcome
        ),
    }
});
