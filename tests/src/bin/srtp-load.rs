//! `srtp-load`: a paced RTP load for the relay benchmark when the relay
//! terminates SRTP on the caller's leg (the shared harness's rtpload speaks
//! plain RTP only). The same shape as rtpload: per call one stream each way
//! of 172-byte packets every 20 ms, streams phased evenly over the period,
//! the send time and the stream in the payload, so the receiver measures
//! loss and one-way relay latency.
//!
//! Usage: srtp-load --ports FILE --caller PORT --callee PORT [--seconds S] [--out JSON]
//!
//! FILE: one line per call, "<relay port facing the caller> <relay port
//! facing the callee> <the caller's a=crypto> | <the relay's a=crypto>" (the
//! crypto values after the first space, split at " | "); without the
//! crypto part the call is plain RTP both ways. The caller's packets leave
//! as SRTP under its key; what reaches the caller must be SRTP under the
//! relay's key (checked and decrypted here: a packet that fails is counted
//! as `refused`, not received); the callee sends and receives plain RTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use weir_media::crypto::Crypto;
use weir_media::srtp::Context;

const PTIME: Duration = Duration::from_millis(20);
const PACKET: usize = 172;
/// Latency histogram: 10 µs buckets up to 40.96 ms.
const BUCKETS: usize = 4096;

struct Call {
    /// Relay ports facing the caller and the callee.
    to_a: SocketAddr,
    to_b: SocketAddr,
    /// The caller's sending key, and the relay's key the caller receives.
    caller_tx: Option<Context>,
    caller_rx: Option<Context>,
}

struct Stream {
    seq: u16,
    timestamp: u32,
    next: Instant,
    sent: u64,
    received: u64,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut ports, mut a_port, mut b_port, mut seconds, mut out) =
        (None, 0u16, 0u16, 20.0f64, None);
    while let Some(a) = args.next() {
        let mut v = || args.next().expect("a value");
        match a.as_str() {
            "--ports" => ports = Some(v()),
            "--caller" => a_port = v().parse().expect("--caller PORT"),
            "--callee" => b_port = v().parse().expect("--callee PORT"),
            "--seconds" => seconds = v().parse().expect("--seconds S"),
            "--out" => out = Some(v()),
            other => panic!("unknown argument {other}"),
        }
    }
    let text = std::fs::read_to_string(ports.expect("--ports FILE")).unwrap();
    let mut calls = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.splitn(3, ' ');
        let port = |p: Option<&str>| -> SocketAddr {
            format!("127.0.0.1:{}", p.unwrap().trim()).parse().unwrap()
        };
        let (to_a, to_b) = (port(parts.next()), port(parts.next()));
        let (caller_tx, caller_rx) = match parts.next() {
            Some(keys) => {
                let (theirs, relay) = keys.split_once(" | ").expect("two a=crypto values");
                let ctx = |v: &str| Context::new(&Crypto::parse(v.trim()).unwrap()).unwrap();
                (Some(ctx(theirs)), Some(ctx(relay)))
            }
            None => (None, None),
        };
        calls.push(Call {
            to_a,
            to_b,
            caller_tx,
            caller_rx,
        });
    }
    assert!(!calls.is_empty(), "no calls");
    // Large socket buffers (as rtpload's), so a scheduling hiccup of the
    // generator is not counted as the relay's loss (capped by rmem_max).
    let bind = |p: u16| -> UdpSocket {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_recv_buffer_size(16 << 20).unwrap();
        s.set_send_buffer_size(16 << 20).unwrap();
        s.bind(&SocketAddr::from(([127, 0, 0, 1], p)).into())
            .unwrap();
        s.set_nonblocking(true).unwrap();
        s.into()
    };
    let (sock_a, sock_b) = (bind(a_port), bind(b_port));
    // Stream 2i: caller → callee (via the relay port facing the caller);
    // 2i+1: callee → caller.
    let n = calls.len() * 2;
    let start = Instant::now() + Duration::from_millis(100);
    let mut streams: Vec<Stream> = (0..n)
        .map(|i| Stream {
            seq: (i as u16).wrapping_mul(7919),
            timestamp: 0,
            next: start + PTIME * (i as u32) / (n as u32),
            sent: 0,
            received: 0,
        })
        .collect();
    // Which call a packet reaching the caller came from: its source port.
    let by_port: HashMap<u16, usize> = calls
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_a.port(), i))
        .collect();
    let end = start + Duration::from_secs_f64(seconds);
    // Per direction: [caller → callee, callee → caller].
    let mut hist = [vec![0u64; BUCKETS + 1], vec![0u64; BUCKETS + 1]];
    let (mut refused, mut late_max) = (0u64, Duration::ZERO);
    let mut buf = vec![0u8; 2048];
    let mut packet = Vec::with_capacity(256);
    let mut cursor = 0usize;
    loop {
        let now = Instant::now();
        if now >= end + Duration::from_secs(1) {
            break;
        }
        // Streams are phased in index order over one period: the next due is
        // always at the cursor.
        while now < end && streams[cursor].next <= now {
            let i = cursor;
            cursor = (cursor + 1) % n;
            let s = &mut streams[i];
            let call = &mut calls[i / 2];
            packet.clear();
            packet.extend_from_slice(&[0x80, 0]);
            packet.extend_from_slice(&s.seq.to_be_bytes());
            packet.extend_from_slice(&s.timestamp.to_be_bytes());
            packet.extend_from_slice(&(0x1000_0000u32 + i as u32).to_be_bytes());
            let sent_ns = Instant::now().duration_since(start).as_nanos() as u64;
            packet.extend_from_slice(&sent_ns.to_be_bytes());
            packet.extend_from_slice(&(i as u32).to_be_bytes());
            packet.resize(PACKET, 0xff);
            let (sock, to) = if i % 2 == 0 {
                if let Some(tx) = &mut call.caller_tx {
                    tx.protect_rtp(&mut packet).unwrap();
                }
                (&sock_a, call.to_a)
            } else {
                (&sock_b, call.to_b)
            };
            if sock.send_to(&packet, to).is_ok() {
                s.sent += 1;
            }
            s.seq = s.seq.wrapping_add(1);
            // 20 ms of 8 kHz audio per packet, sent or not.
            s.timestamp = s.timestamp.wrapping_add(160);
            s.next += PTIME;
        }
        // Take what arrived on both sockets.
        let mut idle = true;
        for (sock, at_caller) in [(&sock_a, true), (&sock_b, false)] {
            while let Ok((len, from)) = sock.recv_from(&mut buf) {
                idle = false;
                let arrived = Instant::now().duration_since(start).as_nanos() as u64;
                packet.clear();
                packet.extend_from_slice(&buf[..len]);
                if at_caller {
                    let Some(&c) = by_port.get(&from.port()) else {
                        refused += 1;
                        continue;
                    };
                    if let Some(rx) = &mut calls[c].caller_rx {
                        if rx.unprotect_rtp(&mut packet).is_err() {
                            refused += 1;
                            continue;
                        }
                    }
                }
                if packet.len() < 24 {
                    refused += 1;
                    continue;
                }
                let sent_ns = u64::from_be_bytes(packet[12..20].try_into().unwrap());
                let id = u32::from_be_bytes(packet[20..24].try_into().unwrap()) as usize;
                let Some(s) = streams.get_mut(id) else {
                    refused += 1;
                    continue;
                };
                s.received += 1;
                let latency = Duration::from_nanos(arrived.saturating_sub(sent_ns));
                late_max = late_max.max(latency);
                let bucket = (latency.as_micros() / 10) as usize;
                hist[id % 2][bucket.min(BUCKETS)] += 1;
            }
        }
        if idle {
            let wait = streams[cursor]
                .next
                .saturating_duration_since(Instant::now());
            std::thread::sleep(wait.min(Duration::from_micros(100)));
        }
    }
    let sent: u64 = streams.iter().map(|s| s.sent).sum();
    let received: u64 = streams.iter().map(|s| s.received).sum();
    let both: Vec<u64> = hist[0].iter().zip(&hist[1]).map(|(a, b)| a + b).collect();
    let pct = |hist: &[u64], q: f64| {
        let total: u64 = hist.iter().sum();
        let want = ((q / 100.0 * total as f64).round() as u64).max(1);
        let mut acc = 0;
        for (i, n) in hist.iter().enumerate() {
            acc += n;
            if acc >= want {
                return i as f64 * 10.0 + 5.0;
            }
        }
        BUCKETS as f64 * 10.0
    };
    let loss = if sent == 0 {
        0.0
    } else {
        100.0 * sent.saturating_sub(received) as f64 / sent as f64
    };
    let summary = format!(
        "{{\"calls\": {}, \"streams\": {n}, \"target_pps\": {}, \"duration_s\": {seconds}, \"sent\": {sent}, \
\"received\": {received}, \"refused\": {refused}, \"loss_pct\": {loss:.4}, \"lat_p50_us\": {}, \
\"lat_p99_us\": {}, \"lat_p99.9_us\": {}, \"lat_max_us\": {}, \"lat_p99_to_callee_us\": {}, \"lat_p99_to_caller_us\": {}}}",
        calls.len(),
        n * 50,
        pct(&both, 50.0),
        pct(&both, 99.0),
        pct(&both, 99.9),
        late_max.as_micros(),
        pct(&hist[0], 99.0),
        pct(&hist[1], 99.0),
    );
    println!("{summary}");
    if let Some(path) = out {
        std::fs::write(path, summary).unwrap();
    }
}
