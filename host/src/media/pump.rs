//! The relay's packet loops: `[media] workers` threads, each waiting on its
//! own level-triggered epoll set of relay sockets.
//!
//! Why not a tokio task per socket (as before): its readiness is
//! edge-triggered, so every wake-up read until the socket said "empty", a
//! second receive per packet at 50 packets a second per socket; and each
//! packet went through the scheduler's wake, queue and cross-thread
//! notification. Here a packet costs one `epoll_wait` shared with every other
//! socket ready at the same time, one `recvfrom` and one `sendto`. All the
//! sockets of a call live on one worker, so its session lock is never
//! contended by another packet of the same call.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};

use rustix::event::epoll::{self, Event, EventData, EventFlags};
use rustix::event::Timespec;
use rustix::io::Errno;
use tracing::{debug, error, warn};

use super::{forward, lock, Call};

/// Ready sockets taken from one `epoll_wait`.
const BATCH: usize = 256;

/// How often an idle worker checks that the relay still exists.
const IDLE_CHECK: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: 500_000_000,
};

/// The largest datagram a relay socket receives whole.
const MAX_DATAGRAM: usize = 65_536;

/// The workers, handed calls in turn.
pub(super) struct Workers {
    workers: Vec<Arc<Worker>>,
    next: AtomicUsize,
}

/// One thread's sockets.
struct Worker {
    epoll: OwnedFd,
    /// Registered sockets by their epoll token (a token is never reused, so
    /// an event of a socket removed meanwhile finds nothing).
    sockets: Mutex<HashMap<u64, Registered>>,
}

#[derive(Clone)]
struct Registered {
    sock: Arc<UdpSocket>,
    port: u16,
    call: Weak<Call>,
}

/// Where a socket was registered, to take it out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Token {
    worker: usize,
    id: u64,
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

impl Workers {
    /// Starts `n` threads (they end once this is dropped).
    pub(super) fn start(n: usize) -> std::io::Result<Workers> {
        let mut workers = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let w = Arc::new(Worker {
                epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
                sockets: Mutex::new(HashMap::new()),
            });
            let weak = Arc::downgrade(&w);
            std::thread::Builder::new()
                .name(format!("weir-media-{i}"))
                .spawn(move || run(weak))?;
            workers.push(w);
        }
        Ok(Workers {
            workers,
            next: AtomicUsize::new(0),
        })
    }

    /// The worker a new call's sockets go to.
    pub(super) fn pick(&self) -> usize {
        self.next.fetch_add(1, Relaxed) % self.workers.len()
    }

    /// Moves what arrives on `sock` (relay port `port`) through `call`.
    pub(super) fn add(
        &self,
        worker: usize,
        sock: Arc<UdpSocket>,
        port: u16,
        call: Weak<Call>,
    ) -> std::io::Result<Token> {
        let w = &self.workers[worker % self.workers.len()];
        let id = NEXT_TOKEN.fetch_add(1, Relaxed);
        // In the map before epoll can report it.
        lock(&w.sockets).insert(
            id,
            Registered {
                sock: sock.clone(),
                port,
                call,
            },
        );
        if let Err(e) = epoll::add(&w.epoll, &*sock, EventData::new_u64(id), EventFlags::IN) {
            lock(&w.sockets).remove(&id);
            return Err(e.into());
        }
        Ok(Token {
            worker: worker % self.workers.len(),
            id,
        })
    }

    /// Stops reading the socket registered as `token`.
    pub(super) fn remove(&self, token: Token) {
        let w = &self.workers[token.worker];
        if let Some(r) = lock(&w.sockets).remove(&token.id) {
            if let Err(e) = epoll::delete(&w.epoll, &*r.sock) {
                debug!(port = r.port, error = %e, "relay socket already out of epoll");
            }
        }
    }
}

/// A worker's loop, until the relay is dropped.
fn run(worker: Weak<Worker>) {
    let empty = Event {
        flags: EventFlags::empty(),
        data: EventData::new_u64(0),
    };
    let mut events = [empty; BATCH];
    let mut ready: Vec<Registered> = Vec::with_capacity(BATCH);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = Vec::with_capacity(2048);
    loop {
        let Some(w) = worker.upgrade() else {
            return;
        };
        let n = match epoll::wait(&w.epoll, &mut events, Some(&IDLE_CHECK)) {
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => {
                // Not expected from a valid epoll fd; never spin on it.
                warn!(error = %e, "relay worker cannot wait for packets");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        {
            let sockets = lock(&w.sockets);
            ready.extend(
                events[..n]
                    .iter()
                    .filter_map(|e| sockets.get(&e.data.u64()).cloned()),
            );
        }
        drop(w);
        // One datagram per ready socket: level-triggered epoll reports a
        // socket with more queued again, after the others had their turn.
        for r in ready.drain(..) {
            match r.sock.recv_from(&mut buf) {
                // A socket whose call is gone is still emptied, or it would
                // be reported for ever.
                Ok((len, from)) => {
                    if let Some(call) = r.call.upgrade() {
                        // A bug in one call's packet path must not silence
                        // every call of this worker (as a panicking task
                        // took only its own socket down before).
                        let relayed =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                forward(&call, r.port, &buf[..len], from, &mut out)
                            }));
                        if relayed.is_err() {
                            error!(port = r.port, call_id = %call.call_id, len, "packet dropped: the relay panicked on it");
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // ICMP errors of earlier sends surface here.
                Err(e) => debug!(port = r.port, error = %e, "relay receive error"),
            }
        }
    }
}
