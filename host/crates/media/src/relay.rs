//! One relayed call's media, sans-IO: the ports it holds, the SDP both
//! parties see, and where each packet goes.
//!
//! ```text
//!   offer from A ──▶ Offered ──answer from B──▶ Active ──(re-)offer from either──▶ Offered
//!      │                │                          │
//!      └── error: nothing held            release (BYE, CANCEL, failure, timeout): every port back
//! ```
//!
//! Per active media line the relay holds two port pairs: one facing A (in the
//! answer A gets, A sends there) and one facing B (in the offer B gets). A
//! packet that arrives on the A-facing port from A's latched source leaves
//! from the B-facing port towards B, and the other way round.

use std::net::{IpAddr, SocketAddr};

use crate::latch::{Latch, Verdict};
use crate::ports::PortPool;
use crate::sdp::{self, Description, SdpError};

/// Why a session could not be set up or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// 488 Not Acceptable Here, with the reason.
    #[error("{0}")]
    Sdp(#[from] SdpError),
    /// 503: the port range is used up.
    #[error("no relay ports left")]
    NoPorts,
    /// An answer or a packet for a session that has no offer yet.
    #[error("no offer to answer")]
    NoOffer,
}

impl SessionError {
    /// The SIP status and reason a request whose SDP met this error gets.
    pub fn sip_status(&self) -> (u16, String) {
        match self {
            SessionError::Sdp(e) => (488, format!("Not Acceptable Here ({e})")),
            SessionError::NoPorts => (503, "Service Unavailable (no relay ports left)".into()),
            SessionError::NoOffer => (
                488,
                "Not Acceptable Here (an answer without an offer)".into(),
            ),
        }
    }
}

/// Which party.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The caller (sent the initial offer).
    A,
    /// The callee.
    B,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

#[derive(Debug)]
struct Stream {
    /// RTP port facing A (A sends here) and facing B.
    facing_a: u16,
    facing_b: u16,
    /// Where each party said to send its media (RTP).
    a_sdp: Option<SocketAddr>,
    b_sdp: Option<SocketAddr>,
    from_a: Latch,
    from_b: Latch,
    /// What each party's SDP last said for this line (address, port): a
    /// description that repeats it (a retransmitted 200, a re-INVITE for
    /// hold) keeps the latch.
    a_said: Option<SocketAddr>,
    b_said: Option<SocketAddr>,
}

impl Stream {
    fn new(facing_a: u16, facing_b: u16) -> Stream {
        Stream {
            facing_a,
            facing_b,
            a_sdp: None,
            b_sdp: None,
            from_a: Latch::default(),
            from_b: Latch::default(),
            a_said: None,
            b_said: None,
        }
    }
}

/// Where a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The relay port to send from.
    pub from_port: u16,
    pub to: SocketAddr,
}

/// One call's relay state.
#[derive(Debug)]
pub struct Session {
    relay: IpAddr,
    streams: Vec<Stream>,
    /// An answer was seen (the call's media is set up both ways).
    pub answered: bool,
    /// The party whose offer awaits an answer.
    pending_offer: Option<Side>,
    /// Packets dropped: from a wrong source, or before the other side's
    /// address is known.
    pub dropped: u64,
}

impl Session {
    pub fn new(relay: IpAddr) -> Session {
        Session {
            relay,
            streams: Vec::new(),
            answered: false,
            pending_offer: None,
            dropped: 0,
        }
    }

    /// A description from `side`, whichever it is: the answer when the other
    /// side's offer awaits one, else an offer. (A proxy sees bodies, not the
    /// offer/answer roles; RFC 3264 §4 makes them follow from the order.)
    pub fn describe(
        &mut self,
        pool: &mut PortPool,
        side: Side,
        sdp_bytes: &[u8],
        signalled_from: Option<IpAddr>,
    ) -> Result<Vec<u8>, SessionError> {
        if self.pending_offer == Some(side.other()) {
            self.answer(side, sdp_bytes, signalled_from)
        } else {
            self.offer(pool, side, sdp_bytes, signalled_from)
        }
    }

    /// The ports this session holds (RTP ports; RTCP is each + 1).
    pub fn ports(&self) -> Vec<u16> {
        self.streams
            .iter()
            .flat_map(|s| [s.facing_a, s.facing_b])
            .collect()
    }

    /// An offer from `side` (the initial INVITE's from A; a re-INVITE's from
    /// either): returns the SDP to pass on to the other side. Ports are taken
    /// for media lines that are new; on an error nothing changes.
    /// `signalled_from`: the address the SIP message carrying it came from
    /// (see [`Session::learn`]).
    pub fn offer(
        &mut self,
        pool: &mut PortPool,
        side: Side,
        sdp_bytes: &[u8],
        signalled_from: Option<IpAddr>,
    ) -> Result<Vec<u8>, SessionError> {
        let d = sdp::inspect(sdp_bytes)?;
        let active = d.media.iter().filter(|m| m.port != 0).count();
        // New media lines get their port pairs first; on any error they are
        // given back and the session is as it was.
        let before = self.streams.len();
        while self.streams.len() < active {
            match (pool.allocate(), pool.allocate()) {
                (Some(a), Some(b)) => self.streams.push(Stream::new(a, b)),
                (a, b) => {
                    for p in a.into_iter().chain(b) {
                        pool.release(p);
                    }
                    self.forget_from(before, pool);
                    return Err(SessionError::NoPorts);
                }
            }
        }
        let facing_other = self.facing(side.other());
        let out = match sdp::rewrite(sdp_bytes, self.relay, &facing_other) {
            Ok(out) => out,
            Err(e) => {
                self.forget_from(before, pool);
                return Err(e.into());
            }
        };
        self.learn(side, &d, signalled_from);
        self.pending_offer = Some(side);
        Ok(out)
    }

    /// The answer from `side` to the last offer: returns the SDP for the
    /// offerer, pointing it at the ports facing it.
    pub fn answer(
        &mut self,
        side: Side,
        sdp_bytes: &[u8],
        signalled_from: Option<IpAddr>,
    ) -> Result<Vec<u8>, SessionError> {
        if self.streams.is_empty() {
            return Err(SessionError::NoOffer);
        }
        let d = sdp::inspect(sdp_bytes)?;
        let out = sdp::rewrite(sdp_bytes, self.relay, &self.facing(side.other()))?;
        self.learn(side, &d, signalled_from);
        self.answered = true;
        self.pending_offer = None;
        Ok(out)
    }

    /// Gives every port back (BYE, CANCEL, a failed call, a media timeout).
    pub fn release(&mut self, pool: &mut PortPool) {
        for p in self.ports() {
            pool.release(p);
        }
        self.streams.clear();
    }

    /// A well-formed packet arrived on relay port `port` from `from`: where it
    /// goes, or None (dropped and counted).
    pub fn route(&mut self, port: u16, from: SocketAddr) -> Option<Route> {
        let rtcp = port % 2 == 1;
        let rtp_port = port - u16::from(rtcp);
        let Some(s) = self
            .streams
            .iter_mut()
            .find(|s| s.facing_a == rtp_port || s.facing_b == rtp_port)
        else {
            self.dropped += 1;
            return None;
        };
        let (latch, to, out_port) = if s.facing_a == rtp_port {
            (&mut s.from_a, s.from_b.source().or(s.b_sdp), s.facing_b)
        } else {
            (&mut s.from_b, s.from_a.source().or(s.a_sdp), s.facing_a)
        };
        // RTCP (RTP port + 1) is taken only from the host RTP latched onto.
        let verdict = if rtcp {
            match latch.source() {
                Some(s) if s.ip() == from.ip() => Verdict::Accept,
                _ => Verdict::Drop,
            }
        } else {
            latch.check(from)
        };
        let Some(to) = to.filter(|_| verdict != Verdict::Drop) else {
            self.dropped += 1;
            return None;
        };
        let to = if rtcp {
            SocketAddr::new(to.ip(), to.port().saturating_add(1))
        } else {
            to
        };
        Some(Route {
            from_port: out_port + u16::from(rtcp),
            to,
        })
    }

    /// The relay's RTP port facing `side` on each media line.
    fn facing(&self, side: Side) -> Vec<u16> {
        self.streams
            .iter()
            .map(|s| match side {
                Side::A => s.facing_a,
                Side::B => s.facing_b,
            })
            .collect()
    }

    /// Gives back the ports of the media lines from index `from` on.
    fn forget_from(&mut self, from: usize, pool: &mut PortPool) {
        for s in self.streams.drain(from..) {
            pool.release(s.facing_a);
            pool.release(s.facing_b);
        }
    }

    /// Records what `side`'s description says and opens its latches again
    /// (its media may have moved).
    ///
    /// Where to send before the party is heard: a public address, or a
    /// private one its own signalling came from (the relay reaches it: same
    /// network). Any other private address is no destination until the party
    /// is heard: behind a NAT it leads nowhere, and naming one must not make
    /// the relay send a call's audio into whatever network it sits in. The
    /// latch learns better in every case.
    fn learn(&mut self, side: Side, d: &Description, signalled_from: Option<IpAddr>) {
        let active = d.media.iter().filter(|m| m.port != 0);
        for (s, m) in self.streams.iter_mut().zip(active) {
            let reachable = !sdp::is_private(m.address) || signalled_from == Some(m.address);
            let addr = reachable.then(|| SocketAddr::new(m.address, m.port));
            let said = Some(SocketAddr::new(m.address, m.port));
            let (sdp_addr, latch, last) = match side {
                Side::A => (&mut s.a_sdp, &mut s.from_a, &mut s.a_said),
                Side::B => (&mut s.b_sdp, &mut s.from_b, &mut s.b_said),
            };
            *sdp_addr = addr;
            if *last != said {
                *latch = Latch::new(m.address);
                *last = said;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn offer(addr: &str, port: u16) -> String {
        format!(
            "v=0\r\no=x 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\n\
m=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
        )
    }

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_call_is_relayed_both_ways_and_gives_its_ports_back() {
        let mut pool = PortPool::new(30000, 30099).unwrap();
        let relay: IpAddr = "203.0.113.7".parse().unwrap();
        let mut s = Session::new(relay);
        // The agent (A) is behind NAT: its SDP names 10.0.0.5.
        let to_b = s
            .offer(&mut pool, Side::A, offer("10.0.0.5", 4000).as_bytes(), None)
            .unwrap();
        let to_b = sdp::inspect(&to_b).unwrap();
        assert_eq!(to_b.media[0].address, relay);
        let (facing_a, facing_b) = (s.ports()[0], s.ports()[1]);
        assert_eq!(to_b.media[0].port, facing_b);
        assert_eq!(to_b.media[0].telephone_event, Some(101), "codecs untouched");
        let to_a = s
            .answer(Side::B, offer("198.51.100.20", 5000).as_bytes(), None)
            .unwrap();
        assert_eq!(sdp::inspect(&to_a).unwrap().media[0].port, facing_a);
        assert!(s.answered);
        assert_eq!(pool.in_use(), 2);

        // B (public) sends first: A's SDP address is private, so nothing
        // goes anywhere until A is heard.
        let b = sock("198.51.100.20:5000");
        assert_eq!(s.route(facing_b, b), None);
        // A's packets come from its NAT: latched, and B's now go there.
        let nat = sock("192.0.2.50:61000");
        assert_eq!(
            s.route(facing_a, nat),
            Some(Route {
                from_port: facing_b,
                to: b
            })
        );
        assert_eq!(
            s.route(facing_b, b),
            Some(Route {
                from_port: facing_a,
                to: nat
            })
        );
        // RTCP follows on the odd ports, from the latched hosts only.
        assert_eq!(
            s.route(facing_a + 1, sock("192.0.2.50:61001")),
            Some(Route {
                from_port: facing_b + 1,
                to: sock("198.51.100.20:5001")
            })
        );
        assert_eq!(s.route(facing_a + 1, sock("203.0.113.66:9")), None);
        // Injection on either side: dropped.
        for _ in 0..100 {
            assert_eq!(s.route(facing_a, sock("203.0.113.66:4000")), None);
            assert_eq!(s.route(facing_b, sock("198.51.100.21:5000")), None);
        }
        assert_eq!(s.route(40000, b), None, "not this session's port");
        assert_eq!(s.dropped, 203);

        s.release(&mut pool);
        s.release(&mut pool);
        assert_eq!((pool.in_use(), pool.available()), (0, 50));
    }

    #[test]
    fn a_re_invite_moves_media_and_relatches() {
        let mut pool = PortPool::new(30000, 30099).unwrap();
        let mut s = Session::new("203.0.113.7".parse().unwrap());
        s.offer(
            &mut pool,
            Side::A,
            offer("198.51.100.1", 4000).as_bytes(),
            None,
        )
        .unwrap();
        s.answer(Side::B, offer("198.51.100.2", 5000).as_bytes(), None)
            .unwrap();
        let (facing_a, facing_b) = (s.ports()[0], s.ports()[1]);
        assert!(s.route(facing_b, sock("198.51.100.2:5000")).is_some());
        // B re-INVITEs from a new host: same relay ports, A is offered them.
        let to_a = s
            .offer(
                &mut pool,
                Side::B,
                offer("198.51.100.9", 6000).as_bytes(),
                None,
            )
            .unwrap();
        assert_eq!(sdp::inspect(&to_a).unwrap().media[0].port, facing_a);
        assert_eq!(pool.in_use(), 2, "no new ports for the same streams");
        assert_eq!(
            s.route(facing_b, sock("198.51.100.2:5000")),
            None,
            "the old host is gone"
        );
        assert_eq!(
            s.route(facing_b, sock("198.51.100.9:6000")),
            Some(Route {
                from_port: facing_a,
                to: sock("198.51.100.1:4000")
            })
        );
    }

    #[test]
    fn exhaustion_and_bad_sdp_hold_nothing() {
        let mut pool = PortPool::new(30000, 30003).unwrap();
        let mut first = Session::new("203.0.113.7".parse().unwrap());
        first
            .offer(
                &mut pool,
                Side::A,
                offer("198.51.100.1", 4000).as_bytes(),
                None,
            )
            .unwrap();
        let mut second = Session::new("203.0.113.7".parse().unwrap());
        assert_eq!(
            second.offer(
                &mut pool,
                Side::A,
                offer("198.51.100.1", 4002).as_bytes(),
                None
            ),
            Err(SessionError::NoPorts)
        );
        assert!(matches!(
            second.offer(&mut pool, Side::A, b"garbage", None),
            Err(SessionError::Sdp(_))
        ));
        assert_eq!(
            second.answer(Side::B, offer("198.51.100.2", 5000).as_bytes(), None),
            Err(SessionError::NoOffer)
        );
        assert_eq!(pool.in_use(), 2);
        first.release(&mut pool);
        assert_eq!(pool.available(), 2);
    }

    #[test]
    fn describe_tells_offer_from_answer_and_a_repeated_description_keeps_the_latch() {
        let mut pool = PortPool::new(30000, 30099).unwrap();
        let mut s = Session::new("203.0.113.7".parse().unwrap());
        // Late offer: the callee's 200 offers, the caller's ACK answers.
        s.describe(&mut pool, Side::B, offer("10.1.1.1", 5000).as_bytes(), None)
            .unwrap();
        assert!(!s.answered);
        s.describe(
            &mut pool,
            Side::A,
            offer("198.51.100.1", 4000).as_bytes(),
            None,
        )
        .unwrap();
        assert!(s.answered);
        let facing_b = s.ports()[1];
        let nat = sock("192.0.2.9:7000");
        assert!(s.route(facing_b, nat).is_some(), "the private side latches");
        // A retransmitted 200 (or a hold re-INVITE naming the same address)
        // must not reopen the latch to whoever sends first.
        s.describe(&mut pool, Side::B, offer("10.1.1.1", 5000).as_bytes(), None)
            .unwrap();
        assert_eq!(s.route(facing_b, sock("203.0.113.66:7000")), None);
        assert!(s.route(facing_b, nat).is_some());
        assert_eq!(pool.in_use(), 2);
    }

    #[test]
    fn a_private_address_is_a_destination_only_when_its_signalling_came_from_it() {
        let mut pool = PortPool::new(30000, 30099).unwrap();
        let carrier = sock("198.51.100.1:4000");
        // The agent's SIP came from its private address itself (the relay
        // shares its network): the relay sends there before hearing it.
        let mut s = Session::new("203.0.113.7".parse().unwrap());
        s.offer(
            &mut pool,
            Side::A,
            offer("198.51.100.1", 4000).as_bytes(),
            None,
        )
        .unwrap();
        s.answer(
            Side::B,
            offer("10.20.0.5", 5000).as_bytes(),
            Some("10.20.0.5".parse().unwrap()),
        )
        .unwrap();
        let (facing_a, facing_b) = (s.ports()[0], s.ports()[1]);
        assert_eq!(
            s.route(facing_a, carrier),
            Some(Route {
                from_port: facing_b,
                to: sock("10.20.0.5:5000")
            })
        );
        // Its SIP came through a NAT: nothing goes to the private address.
        let mut s = Session::new("203.0.113.7".parse().unwrap());
        s.offer(
            &mut pool,
            Side::A,
            offer("198.51.100.1", 4000).as_bytes(),
            None,
        )
        .unwrap();
        s.answer(
            Side::B,
            offer("10.20.0.5", 5000).as_bytes(),
            Some("192.0.2.50".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(s.route(s.ports()[0], carrier), None);
    }
}
