//! Bounded mutation test of the relay's packet path: whatever reaches a
//! relay port goes through `Session::forward`, so seeded random mutations of
//! real packets (SRTP and SRTCP from the party whose SRTP the relay
//! terminates, plain RTP, RFC 4733 events and RTCP from the other) are fed to
//! it from both parties and from strangers, for each SRTP suite. Bounded in
//! count and in time; the seed is printed so a failure can be replayed.
//!
//! What must hold: nothing panics; nothing altered from the SRTP party is
//! ever accepted (every byte of SRTP and SRTCP is authenticated, and every
//! original was already relayed once, so even an unaltered copy is a
//! replay); what the plain party sends leaves with exactly the SRTP overhead
//! added and its RTP header unchanged but for the payload type; and after the
//! storm the SRTP party's next real packets still pass, decrypted, so no
//! forged packet disturbed its stream's state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weir_media::crypto::{Crypto, Suite};
use weir_media::ports::PortPool;
use weir_media::relay::{Refused, Repeat, Session, Side};
use weir_media::srtp::Context;

/// Mutated packets per suite, and the time each suite may take at most.
const COUNT: usize = 200_000;
const TIME: Duration = Duration::from_secs(20);

/// xorshift64*: deterministic from its seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn sdp(addr: &str, port: u16, media: &str) -> String {
    format!("v=0\r\no=- 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\nm=audio {port} {media}\r\n")
}

/// An RTP packet: marker and payload type, sequence number, timestamp, SSRC,
/// then `extra` (CSRCs or an extension, as flagged in `first`) and a payload.
fn rtp(first: u8, mpt: u8, seq: u16, ts: u32, ssrc: u32, extra: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![first, mpt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(extra);
    p.extend_from_slice(payload);
    p
}

/// A compound RTCP packet: a sender report and an SDES CNAME.
fn rtcp(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 200, 0, 6];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0u8; 20]);
    p.extend_from_slice(&[0x81, 202, 0, 3]);
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[1, 4, b'w', b'e', b'i', b'r', 0, 0]);
    p
}

/// Plain packets of every kind the relay meets, numbered from `seq`.
fn plain_packets(seq: u16, ssrc: u32, dtmf_pt: u8) -> Vec<Vec<u8>> {
    let pcmu = [0xffu8; 160];
    let mut padded = rtp(0xa0, 0, seq + 3, 480, ssrc, &[], &pcmu);
    padded.extend_from_slice(&[0, 0, 0, 4]);
    vec![
        rtp(0x80, 0, seq, 0, ssrc, &[], &pcmu),
        // RFC 4733 event, marker set: digit 5, volume 10, duration 160.
        rtp(
            0x80,
            0x80 | dtmf_pt,
            seq + 1,
            160,
            ssrc,
            &[],
            &[5, 10, 0, 160],
        ),
        // Two CSRCs, then a one-byte-header extension (RFC 8285).
        rtp(
            0x82,
            0,
            seq + 2,
            320,
            ssrc,
            &[0, 0, 0, 7, 0, 0, 0, 8],
            &pcmu,
        ),
        padded,
        rtp(
            0x90,
            0,
            seq + 4,
            640,
            ssrc,
            &[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0],
            &pcmu,
        ),
    ]
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        if d.is_empty() {
            d.push(0x80);
        }
        let i = rng.below(d.len());
        match rng.below(8) {
            0 => d[i] ^= 1 << rng.below(8),
            1 => d[i] = rng.next() as u8,
            2 => d.truncate(i),
            3 => {
                let end = (i + 1 + rng.below(16)).min(d.len());
                d.drain(i..end);
            }
            4 => {
                let end = (i + 1 + rng.below(32)).min(d.len());
                let piece = d[i..end].to_vec();
                d.splice(i..i, piece);
            }
            5 => d.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
            // Header fields the parser reads lengths from.
            6 => d[0] = [0x8f, 0x9f, 0xbf, 0xff, 0x00, 0x40][rng.below(6)],
            _ => {
                if d.len() > 3 {
                    d[2] = 0xff;
                    d[3] = rng.next() as u8;
                }
            }
        }
    }
    d
}

#[test]
fn mutated_packets_never_panic_and_never_pass_the_srtp_leg() {
    let seed = std::env::var("WEIR_MUTATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1e55_u64 ^ std::process::id() as u64);
    eprintln!("seed {seed} (WEIR_MUTATION_SEED={seed} replays it)");
    for suite in [
        Suite::AesCm128HmacSha1_80,
        Suite::AesCm128HmacSha1_32,
        Suite::AeadAes128Gcm,
    ] {
        storm(suite, seed);
    }
}

fn storm(suite: Suite, seed: u64) {
    let mut rng = Rng(seed | 1);
    let mut pool = PortPool::new(30000, 30099).unwrap();
    let mut s = Session::new("203.0.113.7".parse().unwrap());
    let mut keys = Rng(seed.rotate_left(17) | 1);
    s.terminate_srtp(
        Side::A,
        Box::new(move |b| b.iter_mut().for_each(|x| *x = keys.next() as u8)),
    );
    // The carrier (A) speaks SRTP and calls DTMF 101; the agent (B) plain
    // RTP with DTMF 96, so the relay renumbers on the way.
    let a_key = Crypto::generate(1, suite, |b| b.fill(9));
    let a_offer = sdp(
        "198.51.100.1",
        4000,
        &format!(
            "RTP/SAVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=crypto:{}\r\n",
            a_key.to_value()
        ),
    );
    let b_answer = sdp(
        "198.51.100.2",
        5000,
        "RTP/AVP 0 96\r\na=rtpmap:96 telephone-event/8000\r\n",
    );
    s.describe(&mut pool, Side::A, a_offer.as_bytes(), None, Repeat::Never)
        .unwrap();
    let to_a = s
        .describe(&mut pool, Side::B, b_answer.as_bytes(), None, Repeat::Maybe)
        .unwrap();
    let to_a = String::from_utf8(to_a).unwrap();
    let relay_value = to_a
        .lines()
        .find_map(|l| l.strip_prefix("a=crypto:"))
        .expect("the relay's key in its answer to A");
    let relay_key = Crypto::parse(relay_value.trim()).unwrap();
    // Tag bytes added to SRTP and to SRTCP (whose tag is 80 bits in either
    // AES-CM suite, RFC 4568 §6.2), and SRTCP's E flag and index.
    let (rtp_overhead, rtcp_overhead) = match suite {
        Suite::AesCm128HmacSha1_80 => (10, 14),
        Suite::AesCm128HmacSha1_32 => (4, 14),
        Suite::AeadAes128Gcm => (16, 20),
    };
    let (facing_a, facing_b) = (s.ports()[0], s.ports()[1]);
    let a: SocketAddr = "198.51.100.1:4000".parse().unwrap();
    let b: SocketAddr = "198.51.100.2:5000".parse().unwrap();
    let stranger: SocketAddr = "192.0.2.66:4000".parse().unwrap();
    // Each party sends RTCP apart from its RTP port + 1, as endpoints do.
    let rtcp_from =
        |party: SocketAddr, port: u16| SocketAddr::new(party.ip(), party.port() + port % 2);

    // Every original is relayed once (latching both parties), so that any
    // copy of it later is a replay.
    let mut a_tx = Context::new(&a_key).unwrap();
    let mut a_seeds = Vec::new();
    for p in plain_packets(100, 0xa1a1_a1a1, 101) {
        let mut p = p.clone();
        a_tx.protect_rtp(&mut p).unwrap();
        a_seeds.push((facing_a, p));
    }
    let mut sr = rtcp(0xa1a1_a1a1);
    a_tx.protect_rtcp(&mut sr).unwrap();
    a_seeds.push((facing_a + 1, sr));
    let mut b_seeds: Vec<(u16, Vec<u8>)> = plain_packets(500, 0xb2b2_b2b2, 96)
        .into_iter()
        .map(|p| (facing_b, p))
        .collect();
    b_seeds.push((facing_b + 1, rtcp(0xb2b2_b2b2)));
    let t = Instant::now();
    for (port, p) in &a_seeds {
        let mut p = p.clone();
        s.forward(t, *port, rtcp_from(a, *port), &mut p)
            .expect("A's real packet");
    }
    for (port, p) in &b_seeds {
        let mut p = p.clone();
        s.forward(t, *port, rtcp_from(b, *port), &mut p)
            .expect("B's real packet");
    }

    let started = Instant::now();
    let (mut from_a, mut from_b, mut b_passed) = (0usize, 0usize, 0usize);
    for i in 0..COUNT {
        if started.elapsed() > TIME {
            eprintln!("{}: time bound reached after {i} packets", suite.name());
            break;
        }
        let now = t + Duration::from_micros(i as u64 * 200);
        match rng.below(5) {
            // From the SRTP party: nothing altered or repeated passes.
            0 | 1 => {
                let (port, seed) = &a_seeds[rng.below(a_seeds.len())];
                let mut p = mutate(&mut rng, seed);
                let input = p.clone();
                let port = if rng.below(8) == 0 { port ^ 1 } else { *port };
                let got = s.forward(now, port, rtcp_from(a, port), &mut p);
                assert!(
                    got.is_err(),
                    "{}: an altered SRTP packet passed as {:?}: {input:02x?}",
                    suite.name(),
                    got.map(|r| r.to)
                );
                from_a += 1;
            }
            // From the plain party: encrypted towards A, header kept.
            2 | 3 => {
                let (port, seed) = &b_seeds[rng.below(b_seeds.len())];
                let mut p = mutate(&mut rng, seed);
                let input = p.clone();
                if let Ok(route) = s.forward(now, *port, rtcp_from(b, *port), &mut p) {
                    // Out of the matching port facing A: RTP or RTCP.
                    assert_eq!(route.to.port(), a.port() + (*port - facing_b));
                    // The RTCP port carries RTCP; the RTP port both, told
                    // apart by the second byte (RFC 5761 §4).
                    let rtcp = *port != facing_b || (192..=223).contains(&input[1]);
                    let extra = if rtcp { rtcp_overhead } else { rtp_overhead };
                    assert_eq!(
                        p.len(),
                        input.len() + extra,
                        "{}: {input:02x?} left as {p:02x?}",
                        suite.name()
                    );
                    if !rtcp {
                        assert_eq!(p[0], input[0]);
                        assert_eq!(p[2..12], input[2..12]);
                    }
                    b_passed += 1;
                }
                from_b += 1;
            }
            // From anyone else, to any of the call's ports: dropped.
            _ => {
                let seeds = if rng.below(2) == 0 {
                    &a_seeds
                } else {
                    &b_seeds
                };
                let (port, seed) = &seeds[rng.below(seeds.len())];
                let mut p = mutate(&mut rng, seed);
                let port = [*port, facing_a, facing_b][rng.below(3)];
                let got = s.forward(now, port, stranger, &mut p);
                assert!(
                    matches!(got, Err(Refused::Source | Refused::Malformed(_))),
                    "{}: a stranger's packet: {got:?}",
                    suite.name()
                );
            }
        }
    }
    eprintln!(
        "{}: {from_a} altered SRTP packets all refused; {b_passed} of {from_b} plain ones relayed",
        suite.name()
    );
    assert!(from_a > 1000 && from_b > 1000);
    // The plain party's checks above ran on enough packets to mean something.
    assert!(b_passed > from_b / 10, "{b_passed} of {from_b}");

    // The SRTP party's stream is intact: its next packets pass, decrypted,
    // renumbered where B's numbers differ.
    let later = t + Duration::from_secs(60);
    for (n, mut want) in plain_packets(106, 0xa1a1_a1a1, 101).into_iter().enumerate() {
        let mut p = want.clone();
        a_tx.protect_rtp(&mut p).unwrap();
        let route = s.forward(later, facing_a, a, &mut p).unwrap_or_else(|e| {
            panic!(
                "{}: A's real packet {n} after the storm: {e:?}",
                suite.name()
            )
        });
        assert_eq!(route.to, b);
        if n == 1 {
            want[1] = 0x80 | 96;
        }
        assert_eq!(p, want, "{}: A's packet {n} after the storm", suite.name());
    }
    // …and what the relay sends A decrypts under the key it gave A.
    let mut a_rx = Context::new(&relay_key).unwrap();
    let mut p = rtp(0x80, 0, 9000, 99_000, 0xb3b3_b3b3, &[], &[0x55; 160]);
    let want = p.clone();
    s.forward(later, facing_b, b, &mut p)
        .expect("B's packet after the storm");
    a_rx.unprotect_rtp(&mut p).unwrap();
    assert_eq!(p, want);
}
