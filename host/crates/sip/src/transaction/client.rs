//! Client transactions (RFC 3261 §17.1).

use std::time::Instant;

use bytes::Bytes;

use super::{due, earliest, Backoff, Step, Timers, TuEvent};
use crate::build;
use crate::message::{Framing, Message};

/// The INVITE client transaction (RFC 3261 §17.1.1, Figure 5, as corrected by
/// RFC 6026 §7.2, Figure 3).
///
/// ```text
///                    INVITE sent
///          Timer A   +-----------+  Timer B / transport error
///          resend ---|  Calling  |------------------------------+ inform TU
///                    +-----------+                              |
///              1xx to TU |   | 2xx to TU ----------------+      |
///                        v   |                           |      |
///          1xx to TU +-----------+ 2xx to TU             v      |
///                    |Proceeding |------------------> +--------+|
///                    +-----------+                    |Accepted|| 2xx to TU
///       300-699: ACK,    |   | 300-699 (from Calling) +--------+|
///       response to TU   v   v                          | Timer M
///                    +-----------+ 300-699: resend ACK   v      v
///                    | Completed |--------------------> +------------+
///                    +-----------+ Timer D              | Terminated |
///                                                       +------------+
/// ```
#[derive(Debug)]
pub struct ClientInvite {
    wire: Bytes,
    reliable: bool,
    timers: Timers,
    state: InviteState,
}

#[derive(Debug)]
enum InviteState {
    Calling(Calling),
    Proceeding,
    Completed(Completed),
    Accepted(Accepted),
    Terminated,
}

#[derive(Debug)]
struct Calling {
    /// Timer A, absent on reliable transports.
    retransmit: Option<Backoff>,
    /// Timer B.
    timeout: Instant,
}

#[derive(Debug)]
struct Completed {
    ack: Bytes,
    /// Timer D.
    until: Instant,
}

#[derive(Debug)]
struct Accepted {
    /// Timer M.
    until: Instant,
}

impl ClientInvite {
    /// Starts the transaction. The caller sends `wire` once now; the transaction
    /// asks for every retransmission.
    pub fn new(now: Instant, wire: Bytes, reliable: bool, timers: Timers) -> Self {
        let retransmit = (!reliable).then(|| Backoff::start(now, timers.t1, None));
        ClientInvite {
            wire,
            reliable,
            timers,
            state: InviteState::Calling(Calling {
                retransmit,
                timeout: now + timers.t1x64(),
            }),
        }
    }

    /// The request this transaction sent, as it went on the wire.
    pub fn wire(&self) -> &Bytes {
        &self.wire
    }

    pub fn state_name(&self) -> &'static str {
        match self.state {
            InviteState::Calling(_) => "Calling",
            InviteState::Proceeding => "Proceeding",
            InviteState::Completed(_) => "Completed",
            InviteState::Accepted(_) => "Accepted",
            InviteState::Terminated => "Terminated",
        }
    }

    pub fn is_terminated(&self) -> bool {
        matches!(self.state, InviteState::Terminated)
    }

    /// True once any response arrived (CANCEL may be sent only then: §9.1).
    pub fn has_response(&self) -> bool {
        !matches!(
            self.state,
            InviteState::Calling(_) | InviteState::Terminated
        )
    }

    /// True until a final response or a timeout.
    pub fn is_pending(&self) -> bool {
        matches!(
            self.state,
            InviteState::Calling(_) | InviteState::Proceeding
        )
    }

    pub fn handle_response(&mut self, now: Instant, resp: Message) -> Step {
        let code = resp.status().unwrap_or(0);
        let state = std::mem::replace(&mut self.state, InviteState::Terminated);
        let (next, step) = match state {
            InviteState::Calling(_) | InviteState::Proceeding if code < 200 => (
                InviteState::Proceeding,
                Step::event(TuEvent::Response(resp)),
            ),
            InviteState::Calling(_) | InviteState::Proceeding if code < 300 => {
                // Accepted only forwards further 2xx: the request is not needed.
                self.wire = Bytes::new();
                (
                    InviteState::Accepted(Accepted {
                        until: now + self.timers.t1x64(),
                    }),
                    Step::event(TuEvent::Response(resp)),
                )
            }
            InviteState::Calling(_) | InviteState::Proceeding => {
                // The request is our own serialisation; it always parses.
                let ack = Message::parse(self.wire.clone(), Framing::Exact)
                    .map(|req| build::ack(&req, &resp))
                    .unwrap_or_default();
                (
                    InviteState::Completed(Completed {
                        ack: ack.clone(),
                        until: now + self.timers.d(self.reliable),
                    }),
                    Step {
                        send: Some(ack),
                        event: Some(TuEvent::Response(resp)),
                    },
                )
            }
            InviteState::Completed(c) if code >= 300 => {
                let ack = c.ack.clone();
                (InviteState::Completed(c), Step::send(ack))
            }
            InviteState::Accepted(a) if (200..300).contains(&code) => {
                // RFC 6026: further 2xx go to the TU, which forwards them.
                (
                    InviteState::Accepted(a),
                    Step::event(TuEvent::Response(resp)),
                )
            }
            other => (other, Step::none()),
        };
        self.state = next;
        step
    }

    /// The transport failed to deliver the request.
    pub fn handle_transport_error(&mut self) -> Step {
        match self.state {
            InviteState::Calling(_) | InviteState::Proceeding => {
                self.state = InviteState::Terminated;
                Step::event(TuEvent::TransportError)
            }
            _ => {
                self.state = InviteState::Terminated;
                Step::none()
            }
        }
    }

    /// Ends the transaction at once (the TU gave up on it).
    pub fn terminate(&mut self) {
        self.state = InviteState::Terminated;
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            InviteState::Calling(c) => earliest(c.retransmit.map(|r| r.at), Some(c.timeout)),
            InviteState::Completed(c) => Some(c.until),
            InviteState::Accepted(a) => Some(a.until),
            InviteState::Proceeding | InviteState::Terminated => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Step {
        let state = std::mem::replace(&mut self.state, InviteState::Terminated);
        let (next, step) = match state {
            InviteState::Calling(c) if now >= c.timeout => {
                (InviteState::Terminated, Step::event(TuEvent::Timeout))
            }
            InviteState::Calling(mut c) => {
                let resend = c.retransmit.as_mut().is_some_and(|r| r.fire(now));
                let step = if resend {
                    Step::send(self.wire.clone())
                } else {
                    Step::none()
                };
                (InviteState::Calling(c), step)
            }
            InviteState::Completed(c) if now >= c.until => (InviteState::Terminated, Step::none()),
            InviteState::Accepted(a) if now >= a.until => (InviteState::Terminated, Step::none()),
            other => (other, Step::none()),
        };
        self.state = next;
        step
    }
}

/// The non-INVITE client transaction (RFC 3261 §17.1.2, Figure 6).
///
/// ```text
///                      Request sent
///     Timer E         +-----------+   Timer F / transport error
///     resend ---------|  Trying   |-------------------------------+ inform TU
///                     +-----------+                               |
///       1xx to TU         |    | 200-699 to TU                    |
///                         v    |                                  |
///     Timer E     +------------+  200-699 to TU                   |
///     resend -----| Proceeding |-----------+                      |
///                 +------------+           v                      v
///                                    +-----------+ Timer K  +------------+
///                                    | Completed |--------->| Terminated |
///                                    +-----------+          +------------+
/// ```
#[derive(Debug)]
pub struct ClientNonInvite {
    wire: Bytes,
    reliable: bool,
    timers: Timers,
    state: NonInviteState,
}

#[derive(Debug)]
enum NonInviteState {
    Trying(Waiting),
    Proceeding(Waiting),
    Completed { until: Instant },
    Terminated,
}

#[derive(Debug)]
struct Waiting {
    /// Timer E, absent on reliable transports.
    retransmit: Option<Backoff>,
    /// Timer F.
    timeout: Instant,
}

impl ClientNonInvite {
    pub fn new(now: Instant, wire: Bytes, reliable: bool, timers: Timers) -> Self {
        let retransmit = (!reliable).then(|| Backoff::start(now, timers.t1, Some(timers.t2)));
        ClientNonInvite {
            wire,
            reliable,
            timers,
            state: NonInviteState::Trying(Waiting {
                retransmit,
                timeout: now + timers.t1x64(),
            }),
        }
    }

    pub fn wire(&self) -> &Bytes {
        &self.wire
    }

    pub fn state_name(&self) -> &'static str {
        match self.state {
            NonInviteState::Trying(_) => "Trying",
            NonInviteState::Proceeding(_) => "Proceeding",
            NonInviteState::Completed { .. } => "Completed",
            NonInviteState::Terminated => "Terminated",
        }
    }

    pub fn is_terminated(&self) -> bool {
        matches!(self.state, NonInviteState::Terminated)
    }

    pub fn is_pending(&self) -> bool {
        matches!(
            self.state,
            NonInviteState::Trying(_) | NonInviteState::Proceeding(_)
        )
    }

    pub fn handle_response(&mut self, now: Instant, resp: Message) -> Step {
        let code = resp.status().unwrap_or(0);
        let state = std::mem::replace(&mut self.state, NonInviteState::Terminated);
        let (next, step) = match state {
            NonInviteState::Trying(w) | NonInviteState::Proceeding(w) if code < 200 => (
                NonInviteState::Proceeding(w),
                Step::event(TuEvent::Response(resp)),
            ),
            NonInviteState::Trying(_) | NonInviteState::Proceeding(_) => {
                // Completed only absorbs retransmitted finals.
                self.wire = Bytes::new();
                (
                    NonInviteState::Completed {
                        until: now + self.timers.t4_or_zero(self.reliable),
                    },
                    Step::event(TuEvent::Response(resp)),
                )
            }
            other => (other, Step::none()),
        };
        self.state = next;
        step
    }

    pub fn handle_transport_error(&mut self) -> Step {
        let pending = self.is_pending();
        self.state = NonInviteState::Terminated;
        if pending {
            Step::event(TuEvent::TransportError)
        } else {
            Step::none()
        }
    }

    pub fn terminate(&mut self) {
        self.state = NonInviteState::Terminated;
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            NonInviteState::Trying(w) | NonInviteState::Proceeding(w) => {
                earliest(w.retransmit.map(|r| r.at), Some(w.timeout))
            }
            NonInviteState::Completed { until } => Some(*until),
            NonInviteState::Terminated => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Step {
        let state = std::mem::replace(&mut self.state, NonInviteState::Terminated);
        let (next, step) = match state {
            NonInviteState::Trying(w) | NonInviteState::Proceeding(w) if now >= w.timeout => {
                (NonInviteState::Terminated, Step::event(TuEvent::Timeout))
            }
            NonInviteState::Trying(mut w) => {
                let step = resend_if_due(&mut w, now, &self.wire);
                (NonInviteState::Trying(w), step)
            }
            NonInviteState::Proceeding(mut w) => {
                // §17.1.2.2: in Proceeding, retransmit every T2.
                if let Some(r) = w.retransmit.as_mut() {
                    r.cap = Some(self.timers.t2);
                    r.interval = self.timers.t2 / 2;
                }
                let step = resend_if_due(&mut w, now, &self.wire);
                (NonInviteState::Proceeding(w), step)
            }
            NonInviteState::Completed { until } if due(Some(until), now) => {
                (NonInviteState::Terminated, Step::none())
            }
            other => (other, Step::none()),
        };
        self.state = next;
        step
    }
}

fn resend_if_due(w: &mut Waiting, now: Instant, wire: &Bytes) -> Step {
    if w.retransmit.as_mut().is_some_and(|r| r.fire(now)) {
        Step::send(wire.clone())
    } else {
        Step::none()
    }
}
