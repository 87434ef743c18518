//! The four transaction state machines of RFC 3261 §17, with the RFC 6026
//! corrections (the `Accepted` state of INVITE transactions).
//!
//! Each machine is sans-IO: the caller passes the current time into every
//! `handle_*` method and asks [`poll_timeout`](ClientInvite::poll_timeout) for the next
//! deadline. A method returns a [`Step`]: bytes to (re)send on the
//! transaction's flow and an event for the transaction user (the proxy core).
//! Each state is its own type holding the timers that live in it; a transition
//! consumes the old state.

mod client;
mod server;

use std::time::{Duration, Instant};

use bytes::Bytes;

pub use client::{ClientInvite, ClientNonInvite};
pub use server::{ServerInvite, ServerNonInvite};

use crate::message::Message;

/// The base timer values of RFC 3261 §17 (Table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// Round-trip estimate: 500 ms by default.
    pub t1: Duration,
    /// Longest retransmit interval for non-INVITE requests and INVITE responses: 4 s.
    pub t2: Duration,
    /// Longest time a message stays in the network: 5 s.
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl Timers {
    /// 64·T1: Timers B, F, H, J (unreliable), L and M.
    pub fn t1x64(&self) -> Duration {
        self.t1 * 64
    }

    /// Timer D: at least 32 s on unreliable transports, zero on reliable ones.
    pub fn d(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.t1x64().max(Duration::from_secs(32))
        }
    }

    /// Timers I and K: T4 on unreliable transports, zero on reliable ones.
    pub fn t4_or_zero(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.t4
        }
    }

    /// Timer J: 64·T1 on unreliable transports, zero on reliable ones.
    pub fn j(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.t1x64()
        }
    }
}

/// What the transaction user learns from a transaction.
// A response moves through here once per message; boxing it would cost an
// allocation each time for no gain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum TuEvent {
    /// A response to pass up (client transactions).
    Response(Message),
    /// Timer B or F fired: the TU acts as if a 408 had arrived.
    Timeout,
    /// The transport reported a failure: the TU acts as if a 503 had arrived.
    TransportError,
    /// Timer H fired: the ACK for a non-2xx final response never came.
    AckTimeout,
}

/// The outcome of one input to a transaction.
#[derive(Debug, Default)]
pub struct Step {
    /// Bytes to send on the transaction's flow (a retransmission, an ACK…).
    pub send: Option<Bytes>,
    pub event: Option<TuEvent>,
}

impl Step {
    fn none() -> Step {
        Step::default()
    }
    fn send(b: Bytes) -> Step {
        Step {
            send: Some(b),
            event: None,
        }
    }
    fn event(e: TuEvent) -> Step {
        Step {
            send: None,
            event: Some(e),
        }
    }
}

/// A retransmission timer that doubles up to a cap (Timers A, E and G).
#[derive(Debug, Clone, Copy)]
struct Backoff {
    at: Instant,
    interval: Duration,
    cap: Option<Duration>,
}

impl Backoff {
    fn start(now: Instant, first: Duration, cap: Option<Duration>) -> Backoff {
        Backoff {
            at: now + first,
            interval: first,
            cap,
        }
    }

    /// Fires if due; re-arms with the doubled interval.
    fn fire(&mut self, now: Instant) -> bool {
        if now < self.at {
            return false;
        }
        let next = self.interval * 2;
        self.interval = match self.cap {
            Some(cap) => next.min(cap),
            None => next,
        };
        self.at = now + self.interval;
        true
    }
}

fn due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|d| now >= d)
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

#[cfg(test)]
mod tests;
