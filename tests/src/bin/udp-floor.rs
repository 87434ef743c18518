//! `udp-floor`: what relaying a datagram costs this machine's kernel, for the
//! RTP benchmark (`FLOOR=1 scripts/bench-rtp.sh`). It forwards as weir's
//! relay workers do (level-triggered epoll, one `recvfrom` and one `sendto`
//! per packet) and does nothing else: static routes, no parsing, no
//! statistics, no SRTP. Its CPU per packet is the floor for a relay that
//! moves each packet with one `recvfrom` and one `sendto` on this machine
//! (batching system calls, `recvmmsg`/`sendmmsg` or io_uring, could go
//! lower; the kernel's UDP path itself stays).
//!
//! Usage: udp-floor --calls N --first-port P --caller PORT --callee PORT --out FILE [--workers W]
//!
//! Binds, per call, the pair P+4i (facing the caller) and P+4i+2 (facing the
//! callee) on 127.0.0.1 and writes them to FILE as rtpload's ports file
//! ("<A> <B>" per line). What arrives on A goes out of B to
//! 127.0.0.1:CALLEE, what arrives on B out of A to 127.0.0.1:CALLER. Runs
//! until killed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use rustix::event::epoll::{self, Event, EventData, EventFlags};

/// A socket and where what it receives goes: out of `out`, to `to`.
struct Route {
    sock: Arc<UdpSocket>,
    out: Arc<UdpSocket>,
    to: SocketAddr,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut calls, mut first, mut caller, mut callee, mut out, mut workers) =
        (0usize, 0u16, 0u16, 0u16, None, 1usize);
    while let Some(a) = args.next() {
        let mut v = || args.next().expect("a value");
        match a.as_str() {
            "--calls" => calls = v().parse().expect("--calls N"),
            "--first-port" => first = v().parse().expect("--first-port P"),
            "--caller" => caller = v().parse().expect("--caller PORT"),
            "--callee" => callee = v().parse().expect("--callee PORT"),
            "--out" => out = Some(v()),
            "--workers" => workers = v().parse().expect("--workers W"),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        usize::from(first) + 4 * calls <= usize::from(u16::MAX),
        "--calls {calls} from port {first} runs past 65535"
    );
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let bind = |p: u16| {
        let s = UdpSocket::bind(addr(p)).unwrap_or_else(|e| panic!("port {p}: {e}"));
        s.set_nonblocking(true).unwrap();
        Arc::new(s)
    };
    let mut shares: Vec<Vec<Route>> = (0..workers.max(1)).map(|_| Vec::new()).collect();
    let mut listing = String::new();
    for i in 0..calls {
        let (pa, pb) = (first + 4 * i as u16, first + 4 * i as u16 + 2);
        let (a, b) = (bind(pa), bind(pb));
        listing.push_str(&format!("{pa} {pb}\n"));
        let share = &mut shares[i % workers.max(1)];
        share.push(Route {
            sock: a.clone(),
            out: b.clone(),
            to: addr(callee),
        });
        share.push(Route {
            sock: b,
            out: a,
            to: addr(caller),
        });
    }
    // Written once every socket is bound: the bench waits for it.
    let path = out.expect("--out FILE");
    std::fs::write(format!("{path}.tmp"), listing).unwrap();
    std::fs::rename(format!("{path}.tmp"), &path).unwrap();
    let threads: Vec<_> = shares
        .into_iter()
        .map(|routes| std::thread::spawn(move || forward(routes)))
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn forward(routes: Vec<Route>) {
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
    for (i, r) in routes.iter().enumerate() {
        epoll::add(&ep, &*r.sock, EventData::new_u64(i as u64), EventFlags::IN).unwrap();
    }
    let empty = Event {
        flags: EventFlags::empty(),
        data: EventData::new_u64(0),
    };
    let mut events = [empty; 256];
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = match epoll::wait(&ep, &mut events, None) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("epoll_wait: {e}"),
        };
        for e in &events[..n] {
            let r = &routes[e.data.u64() as usize];
            if let Ok((len, _)) = r.sock.recv_from(&mut buf) {
                let _ = r.out.send_to(&buf[..len], r.to);
            }
        }
    }
}
