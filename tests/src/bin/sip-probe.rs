//! `sip-probe`: runs inside a test network namespace next to weir. It plays
//! every "next hop" (UDP and TCP catchers on the given ports, answering what
//! weir forwards) and the sender: it sends each message file to weir, waits
//! until things go quiet, and records what arrived where.
//!
//! Usage: sip-probe --proxy ADDR --out DIR [--wire] [--catch PORT]... FILE...
//!
//! For each file it writes `DIR/<file>.fwd.<n>` (requests weir forwarded, with
//! the transport in `DIR/<file>.fwd.<n>.transport`) and a line in
//! `DIR/summary.tsv`: name, number of forwarded requests, reply codes, transports.
//! The last line is `ALIVE <code>`: weir's answer to an OPTIONS after all files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_sip::framing::{StreamFramer, StreamItem};
use weir_sip::{Framing, Message};

#[derive(Debug)]
struct Arrival {
    transport: &'static str,
    bytes: Bytes,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut proxy: Option<SocketAddr> = None;
    let mut out = PathBuf::from(".");
    let mut ports = vec![5060u16];
    let mut wire = false;
    let mut files = vec![];
    while let Some(a) = args.next() {
        match a.as_str() {
            "--proxy" => proxy = args.next().and_then(|v| v.parse().ok()),
            "--out" => out = PathBuf::from(args.next().unwrap()),
            "--catch" => ports.push(args.next().and_then(|v| v.parse().ok()).unwrap()),
            "--wire" => wire = true,
            f => files.push(PathBuf::from(f)),
        }
    }
    let proxy = proxy.expect("--proxy ADDR");
    ports.sort_unstable();
    ports.dedup();
    let (tx, rx) = mpsc::channel::<Arrival>();
    for port in &ports {
        // [::] is dual-stack here: IPv4 arrives as v4-mapped addresses.
        let addr: SocketAddr = SocketAddr::new("::".parse().unwrap(), *port);
        let udp = bind_udp(addr);
        let tx2 = tx.clone();
        std::thread::spawn(move || catch_udp(udp, tx2));
        let tcp = bind_tcp(addr);
        let tx3 = tx.clone();
        std::thread::spawn(move || catch_tcp(tcp, tx3));
    }
    let ready = Instant::now() + Duration::from_secs(10);
    while weir_e2e::options_ping(proxy, Duration::from_millis(200)) != Some(200) {
        assert!(
            Instant::now() < ready,
            "weir did not answer OPTIONS on {proxy}"
        );
    }
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.set_nonblocking(true).unwrap();
    let mut summary = String::new();
    let mut branches: HashSet<Vec<u8>> = HashSet::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let mut bytes = std::fs::read(file).unwrap();
        if wire {
            bytes = weir_sim::corpus::to_wire(&bytes);
        }
        // A file that reuses a branch seen before would be a retransmission:
        // wait out the previous transaction (Timer J at the probe's T1 of 10 ms).
        if let Some(b) = top_branch(&bytes) {
            if !branches.insert(b) {
                std::thread::sleep(Duration::from_millis(800));
            }
        }
        while rx.try_recv().is_ok() {}
        if bytes.len() > 65_000 {
            let mut s = TcpStream::connect(proxy).unwrap();
            let _ = s.write_all(&bytes);
        } else {
            sender.send_to(&bytes, proxy).unwrap();
        }
        let arrivals = collect(&rx, &sender, &bytes, proxy);
        let mut forwarded = 0;
        let mut replies = vec![];
        let mut transports = vec![];
        for a in &arrivals {
            match Message::parse(a.bytes.clone(), Framing::Exact) {
                Ok(m) if m.is_request() && m.method_bytes() != b"ACK" => {
                    let path = out.join(format!("{name}.fwd.{forwarded}"));
                    std::fs::write(&path, &a.bytes).unwrap();
                    std::fs::write(
                        out.join(format!("{name}.fwd.{forwarded}.transport")),
                        a.transport,
                    )
                    .unwrap();
                    forwarded += 1;
                    transports.push(a.transport);
                }
                Ok(m) if !m.is_request() => replies.push(m.status().unwrap_or(0).to_string()),
                Ok(_) => {}
                Err(e) => replies.push(format!("unparseable:{e}")),
            }
        }
        summary.push_str(&format!(
            "{name}\t{forwarded}\t{}\t{}\n",
            replies.join(","),
            transports.join(",")
        ));
    }
    let alive = weir_e2e::options_ping(proxy, Duration::from_secs(2)).unwrap_or(0);
    summary.push_str(&format!("ALIVE {alive}\n"));
    std::fs::write(out.join("summary.tsv"), summary).unwrap();
}

fn top_branch(bytes: &[u8]) -> Option<Vec<u8>> {
    let m = Message::parse(Bytes::copy_from_slice(bytes), Framing::Datagram).ok()?;
    let v = m.top_via()?.ok()?;
    Some([v.branch()?, v.host_text.as_bytes()].concat())
}

/// Everything that arrives until 300 ms pass without anything new (at most 3 s).
/// Like a real UAC, the probe ACKs a 300–699 answer to the INVITE it sent, so
/// weir's server transaction stops retransmitting it.
fn collect(
    rx: &mpsc::Receiver<Arrival>,
    sender: &UdpSocket,
    sent: &[u8],
    proxy: SocketAddr,
) -> Vec<Arrival> {
    let original = Message::parse(Bytes::copy_from_slice(sent), Framing::Datagram).ok();
    let start = Instant::now();
    let mut last = Instant::now();
    let mut out = vec![];
    let mut buf = [0u8; 65_536];
    while last.elapsed() < Duration::from_millis(300) && start.elapsed() < Duration::from_secs(3) {
        if let Ok(a) = rx.recv_timeout(Duration::from_millis(20)) {
            if let (Some(orig), Ok(resp)) =
                (&original, Message::parse(a.bytes.clone(), Framing::Exact))
            {
                let to_sender = resp
                    .top_via()
                    .and_then(Result::ok)
                    .and_then(|v| v.branch())
                    .is_some_and(|b| !b.starts_with(b"z9hG4bKw"));
                if to_sender
                    && resp.status().is_some_and(|c| c >= 300)
                    && orig.method_bytes() == b"INVITE"
                {
                    let _ = sender.send_to(&weir_sip::build::ack(orig, &resp), proxy);
                }
            }
            out.push(a);
            last = Instant::now();
        }
        if let Ok((n, _)) = sender.recv_from(&mut buf) {
            out.push(Arrival {
                transport: "udp",
                bytes: Bytes::copy_from_slice(&buf[..n]),
            });
            last = Instant::now();
        }
    }
    out
}

fn bind_udp(addr: SocketAddr) -> UdpSocket {
    UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"))
}

fn bind_tcp(addr: SocketAddr) -> TcpListener {
    TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind tcp {addr}: {e}"))
}

/// The answer a next hop gives: 486 to INVITE, nothing to ACK, 200 otherwise.
fn answer(bytes: &Bytes) -> Option<Bytes> {
    let m = Message::parse(bytes.clone(), Framing::Exact).ok()?;
    if !m.is_request() || m.method_bytes() == b"ACK" {
        return None;
    }
    let via = m.top_via()?.ok()?;
    // Answer only what weir forwarded (its branches start with z9hG4bKw).
    if !via.branch()?.starts_with(b"z9hG4bKw") {
        return None;
    }
    let code = if m.method_bytes() == b"INVITE" {
        486
    } else {
        200
    };
    Some(weir_sip::build::response(
        &m,
        code,
        "Probe",
        None,
        Some("probe"),
        &[],
    ))
}

fn catch_udp(sock: UdpSocket, tx: mpsc::Sender<Arrival>) {
    let mut buf = vec![0u8; 65_536];
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        let bytes = Bytes::copy_from_slice(&buf[..n]);
        if let Some(r) = answer(&bytes) {
            let _ = sock.send_to(&r, from);
        }
        if tx
            .send(Arrival {
                transport: "udp",
                bytes,
            })
            .is_err()
        {
            return;
        }
    }
}

fn catch_tcp(l: TcpListener, tx: mpsc::Sender<Arrival>) {
    for stream in l.incoming().flatten() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut stream = stream;
            let mut framer = StreamFramer::new(1 << 20);
            let mut buf = vec![0u8; 65_536];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    return;
                }
                framer.push(&buf[..n]);
                while let Ok(Some(item)) = framer.poll() {
                    if let StreamItem::Message(bytes) = item {
                        if let Some(r) = answer(&bytes) {
                            let _ = stream.write_all(&r);
                        }
                        if tx
                            .send(Arrival {
                                transport: "tcp",
                                bytes,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
    }
}
