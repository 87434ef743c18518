//! Bounded mutation fuzzing for CI: seeded random mutations of real SIP messages
//! (built-in ones and, when present, the external corpora) through the parser,
//! the stream framer and the sans-IO proxy. Each loop is bounded in count and
//! in time; the seed is printed so a failure can be replayed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use weir_sim::{corpus, Rng};
use weir_sip::fuzzing::{exercise_framer, exercise_message, exercise_proxy};

const BUILT_IN: &[&[u8]] = &[
    b"INVITE sip:+14155550100@carrier.example.com;user=phone SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK776asdhds;rport\r\nMax-Forwards: 70\r\nTo: <sip:+14155550100@carrier.example.com>\r\nFrom: \"Agent\" <sip:agent@10.0.0.5>;tag=1928301774\r\nCall-ID: a84b4c76e66710@10.0.0.5\r\nCSeq: 314159 INVITE\r\nContact: <sip:agent@10.0.0.5:5060>\r\nRoute: <sip:127.0.0.1:5060;lr>, <sip:edge.example.com;lr>\r\nX-Call-Id: abc\r\nContent-Type: application/sdp\r\nContent-Length: 31\r\n\r\nv=0\r\nc=IN IP4 10.0.0.5\r\nm=audio\r\n",
    b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKw0000000000000000.1\r\nVia: SIP/2.0/UDP 10.0.0.5;branch=z9hG4bK1;received=127.0.0.1;rport=5070\r\nTo: <sip:b@b>;tag=x\r\nFrom: <sip:a@a>;tag=y\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
    b"CANCEL sip:b@127.0.0.1:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nTo: <sip:b@b>\r\nFrom: <sip:a@a>;tag=y\r\nCall-ID: c\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
];

const INTERESTING: &[u8] = b":;,<>\"\\ \r\n\t\0%[]@=?/*0123456789";

fn seeds() -> Vec<Vec<u8>> {
    let mut s: Vec<Vec<u8>> = BUILT_IN.iter().map(|b| b.to_vec()).collect();
    for folder in [
        "rfc4475",
        "rfc5118/wire",
        "kamailio-test-sip",
        "pjsip-fuzz-seeds/fuzz-sip",
    ] {
        if let Some(d) = corpus::folder(folder) {
            s.extend(corpus::files(&d).into_iter().map(|(_, b)| b));
        }
    }
    s
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        if d.is_empty() {
            d.push(b'S');
        }
        let i = rng.below(d.len());
        match rng.below(9) {
            0 => d[i] ^= 1 << rng.below(8),
            1 => d[i] = INTERESTING[rng.below(INTERESTING.len())],
            2 => {
                let end = (i + 1 + rng.below(16)).min(d.len());
                d.drain(i..end);
            }
            3 => {
                let end = (i + 1 + rng.below(32)).min(d.len());
                let piece = d[i..end].to_vec();
                d.splice(i..i, piece);
            }
            4 => {
                // Splice in a line of another seed.
                let other = &seeds[rng.below(seeds.len())];
                let lines: Vec<&[u8]> = other.split(|&b| b == b'\n').collect();
                let line = lines[rng.below(lines.len())];
                let mut ins = line.to_vec();
                ins.push(b'\n');
                d.splice(i..i, ins);
            }
            5 => d.truncate(i),
            6 => {
                d.splice(i..i, b"99999999999999999999".iter().copied());
            }
            7 => {
                let n = rng.below(2000);
                d.splice(i..i, std::iter::repeat_n(b'A', n));
            }
            _ => d.insert(i, INTERESTING[rng.below(INTERESTING.len())]),
        }
    }
    d
}

fn run(
    label: &str,
    count: usize,
    limit: Duration,
    gen: impl Fn(&mut Rng, &[Vec<u8>]) -> Vec<u8>,
    f: impl Fn(&[u8]) + std::panic::RefUnwindSafe,
) {
    let seed = std::env::var("WEIR_MUTATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0000 + label.len() as u64);
    let seeds = seeds();
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let mut n = 0;
    while n < count && start.elapsed() < limit {
        let input = gen(&mut rng, &seeds);
        let outcome = std::panic::catch_unwind(|| f(&input));
        if outcome.is_err() {
            let path = std::env::temp_dir().join(format!("weir-mutation-{label}-{seed}-{n}.sip"));
            let _ = std::fs::write(&path, &input);
            panic!(
                "{label}: input #{n} (seed {seed}) broke the code; saved to {}",
                path.display()
            );
        }
        n += 1;
    }
    eprintln!(
        "{label}: {n} mutated inputs in {:?} (seed {seed})",
        start.elapsed()
    );
    assert!(n > 0);
}

#[test]
fn mutated_messages_through_the_parser() {
    run(
        "parser",
        400_000,
        Duration::from_secs(30),
        mutate,
        exercise_message,
    );
}

#[test]
fn mutated_streams_through_the_framer() {
    run(
        "framer",
        400_000,
        Duration::from_secs(20),
        mutate,
        exercise_framer,
    );
}

/// Up to three messages per input, separated by NUL (see `exercise_proxy`): a
/// mutation, another, and sometimes the first again (a retransmission).
fn conversation(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let first = mutate(rng, seeds);
    let mut out = first.clone();
    out.push(0);
    out.extend(mutate(rng, seeds));
    if rng.chance(0.3) {
        out.push(0);
        out.extend(first);
    }
    out
}

#[test]
fn mutated_conversations_through_the_proxy() {
    run(
        "proxy",
        150_000,
        Duration::from_secs(40),
        conversation,
        exercise_proxy,
    );
}
