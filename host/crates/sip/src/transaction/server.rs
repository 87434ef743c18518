//! Server transactions (RFC 3261 §17.2).

use std::time::Instant;

use bytes::Bytes;

use super::{earliest, Backoff, Step, Timers, TuEvent};

/// The INVITE server transaction (RFC 3261 §17.2.1, Figure 7, as corrected by
/// RFC 6026 §7.1, Figure 5).
///
/// ```text
///                      INVITE received (TU sends 100 Trying)
///  INVITE: resend     +------------+  2xx from TU: send
///  last provisional --| Proceeding |----------------------+
///                     +------------+                      v
///      300-699 from TU: send |  1xx from TU: send    +----------+  2xx from TU: send
///                            v                       | Accepted |  INVITE: absorb
///  INVITE: resend     +-----------+                  +----------+
///  final; Timer G ----| Completed |-- Timer H: tell TU --+  | Timer L
///                     +-----------+                       |  |
///                            | ACK                        v  v
///                            v                       +------------+
///  ACK: absorb        +-----------+   Timer I        |            |
///                  ---| Confirmed |----------------->| Terminated |
///                     +-----------+                  +------------+
/// ```
#[derive(Debug)]
pub struct ServerInvite {
    reliable: bool,
    timers: Timers,
    state: ServerInviteState,
}

#[derive(Debug)]
enum ServerInviteState {
    Proceeding { last: Option<Bytes> },
    Completed(ServerCompleted),
    Confirmed { until: Instant },
    Accepted { until: Instant },
    Terminated,
}

#[derive(Debug)]
struct ServerCompleted {
    response: Bytes,
    /// Timer G, absent on reliable transports.
    retransmit: Option<Backoff>,
    /// Timer H.
    give_up: Instant,
}

impl ServerInvite {
    pub fn new(reliable: bool, timers: Timers) -> Self {
        ServerInvite {
            reliable,
            timers,
            state: ServerInviteState::Proceeding { last: None },
        }
    }

    pub fn state_name(&self) -> &'static str {
        match self.state {
            ServerInviteState::Proceeding { .. } => "Proceeding",
            ServerInviteState::Completed(_) => "Completed",
            ServerInviteState::Confirmed { .. } => "Confirmed",
            ServerInviteState::Accepted { .. } => "Accepted",
            ServerInviteState::Terminated => "Terminated",
        }
    }

    pub fn is_terminated(&self) -> bool {
        matches!(self.state, ServerInviteState::Terminated)
    }

    /// True while no final response has been sent.
    pub fn is_proceeding(&self) -> bool {
        matches!(self.state, ServerInviteState::Proceeding { .. })
    }

    /// A retransmission of the INVITE arrived.
    pub fn handle_retransmission(&mut self) -> Step {
        match &self.state {
            ServerInviteState::Proceeding { last: Some(b) } => Step::send(b.clone()),
            ServerInviteState::Completed(c) => Step::send(c.response.clone()),
            _ => Step::none(),
        }
    }

    /// An ACK matching this transaction arrived (the ACK of a non-2xx response).
    /// Returns false when the ACK does not belong to this state (it is then an
    /// ACK for a 2xx, which the proxy forwards).
    pub fn handle_ack(&mut self, now: Instant) -> bool {
        match self.state {
            ServerInviteState::Completed(_) => {
                self.state = ServerInviteState::Confirmed {
                    until: now + self.timers.t4_or_zero(self.reliable),
                };
                true
            }
            ServerInviteState::Confirmed { .. } => true,
            _ => false,
        }
    }

    /// The TU sends a response through this transaction. Returns the bytes to send
    /// (`None` when the state no longer accepts that response).
    pub fn send_response(&mut self, now: Instant, code: u16, wire: Bytes) -> Option<Bytes> {
        let state = std::mem::replace(&mut self.state, ServerInviteState::Terminated);
        let (next, out) = match state {
            ServerInviteState::Proceeding { .. } if code < 200 => (
                ServerInviteState::Proceeding {
                    last: Some(wire.clone()),
                },
                Some(wire),
            ),
            ServerInviteState::Proceeding { .. } if code < 300 => (
                ServerInviteState::Accepted {
                    until: now + self.timers.t1x64(),
                },
                Some(wire),
            ),
            ServerInviteState::Proceeding { .. } => (
                ServerInviteState::Completed(ServerCompleted {
                    response: wire.clone(),
                    retransmit: (!self.reliable)
                        .then(|| Backoff::start(now, self.timers.t1, Some(self.timers.t2))),
                    give_up: now + self.timers.t1x64(),
                }),
                Some(wire),
            ),
            ServerInviteState::Accepted { until } if (200..300).contains(&code) => {
                (ServerInviteState::Accepted { until }, Some(wire))
            }
            other => (other, None),
        };
        self.state = next;
        out
    }

    pub fn handle_transport_error(&mut self) {
        self.state = ServerInviteState::Terminated;
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            ServerInviteState::Completed(c) => {
                earliest(c.retransmit.map(|r| r.at), Some(c.give_up))
            }
            ServerInviteState::Confirmed { until } | ServerInviteState::Accepted { until } => {
                Some(*until)
            }
            ServerInviteState::Proceeding { .. } | ServerInviteState::Terminated => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Step {
        let state = std::mem::replace(&mut self.state, ServerInviteState::Terminated);
        let (next, step) = match state {
            ServerInviteState::Completed(c) if now >= c.give_up => (
                ServerInviteState::Terminated,
                Step::event(TuEvent::AckTimeout),
            ),
            ServerInviteState::Completed(mut c) => {
                let step = if c.retransmit.as_mut().is_some_and(|r| r.fire(now)) {
                    Step::send(c.response.clone())
                } else {
                    Step::none()
                };
                (ServerInviteState::Completed(c), step)
            }
            ServerInviteState::Confirmed { until } | ServerInviteState::Accepted { until }
                if now >= until =>
            {
                (ServerInviteState::Terminated, Step::none())
            }
            other => (other, Step::none()),
        };
        self.state = next;
        step
    }
}

/// The non-INVITE server transaction (RFC 3261 §17.2.2, Figure 8).
///
/// ```text
///                       Request received
///  request: absorb    +-----------+
///                  ---|  Trying   |---------------+ 200-699 from TU: send
///                     +-----------+               |
///       1xx from TU: send  |                      |
///                          v                      |
///  request: resend    +------------+              |
///  provisional     ---| Proceeding |---------+    |
///                     +------------+         v    v
///                                       +-----------+  Timer J  +------------+
///  request: resend final             ---| Completed |---------->| Terminated |
///                                       +-----------+           +------------+
/// ```
#[derive(Debug)]
pub struct ServerNonInvite {
    reliable: bool,
    timers: Timers,
    state: ServerNonInviteState,
}

#[derive(Debug)]
enum ServerNonInviteState {
    Trying,
    Proceeding { last: Bytes },
    Completed { response: Bytes, until: Instant },
    Terminated,
}

impl ServerNonInvite {
    pub fn new(reliable: bool, timers: Timers) -> Self {
        ServerNonInvite {
            reliable,
            timers,
            state: ServerNonInviteState::Trying,
        }
    }

    pub fn state_name(&self) -> &'static str {
        match self.state {
            ServerNonInviteState::Trying => "Trying",
            ServerNonInviteState::Proceeding { .. } => "Proceeding",
            ServerNonInviteState::Completed { .. } => "Completed",
            ServerNonInviteState::Terminated => "Terminated",
        }
    }

    pub fn is_terminated(&self) -> bool {
        matches!(self.state, ServerNonInviteState::Terminated)
    }

    pub fn is_final_sent(&self) -> bool {
        matches!(
            self.state,
            ServerNonInviteState::Completed { .. } | ServerNonInviteState::Terminated
        )
    }

    pub fn handle_retransmission(&mut self) -> Step {
        match &self.state {
            ServerNonInviteState::Proceeding { last } => Step::send(last.clone()),
            ServerNonInviteState::Completed { response, .. } => Step::send(response.clone()),
            _ => Step::none(),
        }
    }

    pub fn send_response(&mut self, now: Instant, code: u16, wire: Bytes) -> Option<Bytes> {
        let state = std::mem::replace(&mut self.state, ServerNonInviteState::Terminated);
        let (next, out) = match state {
            ServerNonInviteState::Trying | ServerNonInviteState::Proceeding { .. }
                if code < 200 =>
            {
                (
                    ServerNonInviteState::Proceeding { last: wire.clone() },
                    Some(wire),
                )
            }
            ServerNonInviteState::Trying | ServerNonInviteState::Proceeding { .. } => (
                ServerNonInviteState::Completed {
                    response: wire.clone(),
                    until: now + self.timers.j(self.reliable),
                },
                Some(wire),
            ),
            other => (other, None),
        };
        self.state = next;
        out
    }

    pub fn handle_transport_error(&mut self) {
        self.state = ServerNonInviteState::Terminated;
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            ServerNonInviteState::Completed { until, .. } => Some(*until),
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let ServerNonInviteState::Completed { until, .. } = self.state {
            if now >= until {
                self.state = ServerNonInviteState::Terminated;
            }
        }
    }
}
