//! The relay's per-packet work, sans-IO: a plain RTP packet routed, and one
//! going through SRTP termination (decrypted from the SRTP party, or
//! encrypted towards it). What a socket costs on top is measured by
//! `scripts/bench-rtp.sh`.

#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir_media::crypto::{Crypto, Suite};
use weir_media::ports::PortPool;
use weir_media::relay::{Session, Side};
use weir_media::srtp;

fn sdp(ip: &str, port: u16, crypto: Option<&str>) -> String {
    let (proto, line) = match crypto {
        Some(c) => ("RTP/SAVP", format!("a=crypto:{c}\r\n")),
        None => ("RTP/AVP", String::new()),
    };
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} {proto} 0\r\n{line}"
    )
}

fn packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p.resize(172, 0xd5);
    p
}

fn relay(c: &mut Criterion) {
    let mut g = c.benchmark_group("relay");
    g.throughput(Throughput::Elements(1));
    let (a, b): (SocketAddr, SocketAddr) = (
        "198.51.100.1:4000".parse().unwrap(),
        "198.51.100.2:5000".parse().unwrap(),
    );

    let mut pool = PortPool::new(30000, 30099).unwrap();
    let mut plain = Session::new("203.0.113.7".parse().unwrap());
    plain
        .offer(
            &mut pool,
            Side::A,
            sdp("198.51.100.1", 4000, None).as_bytes(),
            None,
        )
        .unwrap();
    plain
        .answer(Side::B, sdp("198.51.100.2", 5000, None).as_bytes(), None)
        .unwrap();
    let facing_a = plain.ports()[0];
    let mut buf = packet(1);
    g.bench_function("plain RTP, routed", |bench| {
        bench.iter(|| {
            plain
                .forward(Instant::now(), facing_a, a, &mut buf)
                .unwrap()
        })
    });

    // SRTP on A's leg, for each suite: B's plain packets are encrypted
    // towards A…
    for (suite, name) in [
        (Suite::AesCm128HmacSha1_80, "AES_CM_128_HMAC_SHA1_80"),
        (Suite::AeadAes128Gcm, "AEAD_AES_128_GCM"),
    ] {
        let a_key = Crypto::generate(1, suite, |k| k.fill(7));
        let mut srtp_call = Session::new("203.0.113.7".parse().unwrap());
        srtp_call.terminate_srtp(Side::A, Box::new(|k| k.fill(9)));
        srtp_call
            .offer(
                &mut pool,
                Side::A,
                sdp("198.51.100.1", 4000, Some(&a_key.to_value())).as_bytes(),
                None,
            )
            .unwrap();
        srtp_call
            .answer(Side::B, sdp("198.51.100.2", 5000, None).as_bytes(), None)
            .unwrap();
        let (facing_a, facing_b) = (srtp_call.ports()[0], srtp_call.ports()[1]);
        let mut seq = 0u16;
        g.bench_function(
            format!("RTP to the SRTP leg, encrypted ({name})"),
            |bench| {
                bench.iter(|| {
                    seq = seq.wrapping_add(1);
                    let mut p = packet(seq);
                    srtp_call
                        .forward(Instant::now(), facing_b, b, &mut p)
                        .unwrap();
                    p
                })
            },
        );
        // …and A's SRTP is checked and decrypted (each packet protected
        // outside the measured part, sequence numbers rising as on the wire).
        let mut a_tx = srtp::Context::new(&a_key).unwrap();
        let mut a_seq = 0u16;
        g.bench_function(
            format!("SRTP from the SRTP leg, checked and decrypted ({name})"),
            |bench| {
                bench.iter_batched(
                    || {
                        a_seq = a_seq.wrapping_add(1);
                        let mut p = packet(a_seq);
                        a_tx.protect_rtp(&mut p).unwrap();
                        p
                    },
                    |mut p| {
                        srtp_call
                            .forward(Instant::now(), facing_a, a, &mut p)
                            .unwrap();
                        p
                    },
                    criterion::BatchSize::SmallInput,
                )
            },
        );
    }
    g.finish();
}

criterion_group!(benches, relay);
criterion_main!(benches);
