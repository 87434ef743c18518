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
use std::time::Instant;

use crate::crypto::{Crypto, Suite};
use crate::latch::{Latch, Verdict};
use crate::ports::PortPool;
use crate::rtp::{self, Packet, PacketError};
use crate::sdp::{self, CryptoEdit, Description, Format, SdpError};
use crate::srtp::{self, SrtpError};
use crate::stats::{self, Reception, Report};

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
    /// The SRTP leg's keys cannot be used (488).
    #[error("{0}")]
    Srtp(String),
    /// A late response whose SDP is not the one the relay took.
    #[error("a late response with new SDP")]
    NotAResend,
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
            SessionError::Srtp(why) => (488, format!("Not Acceptable Here ({why})")),
            SessionError::NotAResend => (
                488,
                "Not Acceptable Here (a late response with new SDP)".into(),
            ),
        }
    }
}

/// Whether a description may be one the relay already took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// An INVITE's or an UPDATE's: always a new offer (RFC 3261 §13.2.1,
    /// RFC 3311), even in the same bytes as before (a session refresh) or
    /// while the other party's offer awaits its answer (glare: both
    /// requests will fail with 491, see [`Session::withdraw`]).
    Offer,
    /// Another request's (a PRACK's): new, the answer to a pending offer
    /// or else an offer.
    Never,
    /// A response's or an ACK's: the same bytes as that party's last
    /// description are a resend (a 200 repeating its 183's answer, a 2xx or
    /// ACK sent again) and get the same answer, changing nothing.
    Maybe,
    /// A response no transaction knows (a 2xx resent after its
    /// transaction, or another fork's): only a resend is taken; anything
    /// else is refused, never made the dialog's media.
    Only,
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
    /// Where the relay terminates SRTP: what a party sends is decrypted
    /// (`from_*`), what it receives encrypted (`to_*`).
    keys: Keys,
    /// The last description from either party put this line on hold.
    held: bool,
    /// `audio`, `video`… (from the last description).
    kind: String,
    /// The payload types each party declared (what it receives).
    a_formats: Vec<Format>,
    b_formats: Vec<Format>,
    /// Each party's line is SRTP: where the relay does not terminate it,
    /// headers are authenticated end to end and never renumbered.
    /// The RTCP port each party's SDP named (`a=rtcp`, RFC 3605), if any.
    a_rtcp_port: Option<u16>,
    b_rtcp_port: Option<u16>,
    /// Each party's last description of the line has `a=rtcp-mux`.
    a_mux: bool,
    b_mux: bool,
    /// The last answer agreed to multiplex RTCP on the RTP ports (RFC 5761
    /// §5.1.1: offer and answer both carry `a=rtcp-mux`).
    muxed: bool,
    a_srtp: bool,
    b_srtp: bool,
    /// What each party's packets are, on their way to the other: payload
    /// type renumbering and clock rates (see [`Timing`]).
    timing_a: Timing,
    timing_b: Timing,
    rx_a: Reception,
    rx_b: Reception,
}

/// Per direction: what the receiver calls each payload type the sender
/// uses, and its clock.
///
/// RFC 3264 has each party send with the numbers the receiver declared, so
/// the two legs agree even when their descriptions differ. Some endpoints
/// send with their own numbers instead (a classic cause of lost DTMF when a
/// carrier says 101 and an agent 96): a payload type the receiver never
/// declared, but the sender did for a codec the receiver has under another
/// number, is renumbered on the way.
#[derive(Debug, Default, Clone)]
struct Timing {
    /// (sender's number, receiver's number).
    map: Vec<(u8, u8)>,
    /// (payload type as sent on, clock rate, is telephone-event).
    clocks: Vec<(u8, u32, bool)>,
}

impl Timing {
    fn new(sender: &[Format], receiver: &[Format]) -> Timing {
        let declared = |pt: u8| receiver.iter().any(|f| f.payload_type == pt);
        let map = sender
            .iter()
            .filter(|f| !declared(f.payload_type))
            .filter_map(|f| {
                let theirs = receiver.iter().find(|r| r.same_codec(f))?;
                Some((f.payload_type, theirs.payload_type))
            })
            .collect();
        let mut clocks: Vec<(u8, u32, bool)> = receiver
            .iter()
            .map(|f| (f.payload_type, f.clock_rate, f.is_telephone_event()))
            .collect();
        for f in sender {
            if !clocks.iter().any(|c| c.0 == f.payload_type) {
                clocks.push((f.payload_type, f.clock_rate, f.is_telephone_event()));
            }
        }
        Timing { map, clocks }
    }

    fn renumber(&self, pt: u8) -> Option<u8> {
        self.map.iter().find(|(from, _)| *from == pt).map(|m| m.1)
    }

    fn clock(&self, pt: u8) -> (u32, bool) {
        self.clocks
            .iter()
            .find(|c| c.0 == pt)
            .map_or((0, false), |c| (c.1, c.2))
    }
}

/// A master key and the SRTP state kept under it (rollover counters,
/// replay windows).
#[derive(Debug, Clone)]
struct Key {
    crypto: Crypto,
    ctx: srtp::Context,
}

impl Key {
    fn new(crypto: Crypto) -> Result<Key, SrtpError> {
        let ctx = srtp::Context::new(&crypto)?;
        Ok(Key { crypto, ctx })
    }

    /// The same master key, salt, suite and MKI (the tag only names the
    /// line; a lifetime restated changes nothing).
    fn same(&self, c: &Crypto) -> bool {
        self.crypto.suite == c.suite
            && self.crypto.key == c.key
            && self.crypto.salt == c.salt
            && self.crypto.mki == c.mki
    }
}

/// The keys of a line whose SRTP the relay terminates.
///
/// A description that repeats a key (a hold, a session refresh) leaves its
/// context be: replacing it would reset the rollover counter, and after the
/// first 65,536 packets (22 minutes of audio) nothing would authenticate.
/// The relay keeps its own key across descriptions too (no re-keying on a
/// re-INVITE). A new key from the SRTP party is taken once a packet
/// authenticates under it: until then its packets may still come under the
/// old one (its description and its first packets under the new key race,
/// and an offer may yet be refused).
#[derive(Debug, Default)]
struct Keys {
    /// The SRTP party's key: what it sends is checked and decrypted with it.
    theirs: Option<Key>,
    /// Its new key, not heard in use yet.
    next: Option<Key>,
    /// The relay's key for that party: what it receives is encrypted with it.
    ours: Option<Key>,
    /// The tag and suite the SRTP party offered, for the key answering it.
    offered: Option<(u32, Suite)>,
}

impl Keys {
    /// Checks and decrypts a packet from the SRTP party, under its new key
    /// when the current one refuses it (the new one then replaces it).
    fn open(&mut self, rtcp: bool, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        let open = |k: &mut Key, packet: &mut Vec<u8>| {
            if rtcp {
                k.ctx.unprotect_rtcp(packet)
            } else {
                k.ctx.unprotect_rtp(packet)
            }
        };
        let Some(current) = self.theirs.as_mut() else {
            return Err(SrtpError::NoKey);
        };
        // A refused packet is left as it came (see `srtp::Context`).
        let refused = match open(current, packet) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let Some(next) = self.next.as_mut() else {
            return Err(refused);
        };
        open(next, packet).map_err(|_| refused)?;
        self.theirs = self.next.take();
        Ok(())
    }

    /// Encrypts a packet for the SRTP party.
    fn seal(&mut self, rtcp: bool, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        let k = self.ours.as_mut().ok_or(SrtpError::NoKey)?;
        if rtcp {
            k.ctx.protect_rtcp(packet)
        } else {
            k.ctx.protect_rtp(packet)
        }
    }

    /// The SRTP party's key from a description that went through.
    fn take_theirs(&mut self, key: Key) {
        match &self.theirs {
            None => self.theirs = Some(key),
            Some(current) if current.same(&key.crypto) => self.next = None,
            Some(_) => self.next = Some(key),
        }
    }
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
            keys: Keys::default(),
            held: false,
            kind: String::new(),
            a_formats: Vec::new(),
            b_formats: Vec::new(),
            a_rtcp_port: None,
            b_rtcp_port: None,
            a_mux: false,
            b_mux: false,
            muxed: false,
            a_srtp: false,
            b_srtp: false,
            timing_a: Timing::default(),
            timing_b: Timing::default(),
            rx_a: Reception::default(),
            rx_b: Reception::default(),
        }
    }

    /// What the descriptions so far made of this line (see [`Agreed`]).
    fn terms(&self) -> Terms {
        Terms {
            a_sdp: self.a_sdp,
            b_sdp: self.b_sdp,
            a_said: self.a_said,
            b_said: self.b_said,
            from_a: self.from_a.clone(),
            from_b: self.from_b.clone(),
            held: self.held,
            kind: self.kind.clone(),
            a_formats: self.a_formats.clone(),
            b_formats: self.b_formats.clone(),
            a_rtcp_port: self.a_rtcp_port,
            b_rtcp_port: self.b_rtcp_port,
            a_mux: self.a_mux,
            b_mux: self.b_mux,
            a_srtp: self.a_srtp,
            b_srtp: self.b_srtp,
            timing_a: self.timing_a.clone(),
            timing_b: self.timing_b.clone(),
            offered: self.keys.offered,
            next: self.keys.next.clone(),
        }
    }

    /// Back to `t`. A latch the refused offer reopened comes back unless
    /// it has heard its party since (a party that moved, the offer refused
    /// or not, is where its packets come from). A key heard in use stays
    /// (see [`Keys`]); one agreed but not heard yet comes back.
    fn restore(&mut self, t: Terms) {
        if self.a_said != t.a_said && self.from_a.source().is_none() {
            self.from_a = t.from_a;
        }
        if self.b_said != t.b_said && self.from_b.source().is_none() {
            self.from_b = t.from_b;
        }
        self.a_sdp = t.a_sdp;
        self.b_sdp = t.b_sdp;
        self.a_said = t.a_said;
        self.b_said = t.b_said;
        self.held = t.held;
        self.kind = t.kind;
        self.a_formats = t.a_formats;
        self.b_formats = t.b_formats;
        self.a_rtcp_port = t.a_rtcp_port;
        self.b_rtcp_port = t.b_rtcp_port;
        self.a_mux = t.a_mux;
        self.b_mux = t.b_mux;
        self.a_srtp = t.a_srtp;
        self.b_srtp = t.b_srtp;
        self.timing_a = t.timing_a;
        self.timing_b = t.timing_b;
        self.keys.offered = t.offered;
        let heard = |k: &Key| self.keys.theirs.as_ref().is_some_and(|h| h.same(&k.crypto));
        self.keys.next = t.next.filter(|k| !heard(k));
    }

    /// Where `side`'s RTP (or RTCP on its own port) goes: where it was
    /// heard from, else where its SDP said (RTCP: its `a=rtcp` port, or the
    /// RTP port + 1 of either); None while a private address it named is
    /// no destination (see `Session::learn`).
    fn destination(&self, side: Side, rtcp: bool) -> Option<SocketAddr> {
        let (latch, sdp, said, rtcp_port) = match side {
            Side::A => (&self.from_a, self.a_sdp, self.a_said, self.a_rtcp_port),
            Side::B => (&self.from_b, self.b_sdp, self.b_said, self.b_rtcp_port),
        };
        if !rtcp {
            return latch.source().or(sdp);
        }
        if let Some(heard) = latch.rtcp_source() {
            return Some(heard);
        }
        match (latch.source(), sdp) {
            // Heard where its SDP said (no NAT between): its a=rtcp holds.
            (Some(rtp), _) if Some(rtp) == said && rtcp_port.is_some() => Some(SocketAddr::new(
                rtp.ip(),
                rtcp_port.unwrap_or(rtp.port().saturating_add(1)),
            )),
            (Some(rtp), _) => Some(SocketAddr::new(rtp.ip(), rtp.port().saturating_add(1))),
            (None, Some(sdp)) => Some(SocketAddr::new(
                sdp.ip(),
                rtcp_port.unwrap_or(sdp.port().saturating_add(1)),
            )),
            (None, None) => None,
        }
    }

    fn report(&self) -> StreamReport {
        StreamReport {
            kind: self.kind.clone(),
            facing_a: self.facing_a,
            facing_b: self.facing_b,
            a: self.from_a.source().or(self.a_sdp),
            b: self.from_b.source().or(self.b_sdp),
            from_a: self.rx_a.report(),
            from_b: self.rx_b.report(),
        }
    }
}

/// One media line of a relayed call, as [`Session::report`] tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamReport {
    pub kind: String,
    /// The relay's RTP port facing each party.
    pub facing_a: u16,
    pub facing_b: u16,
    /// Where each party's media goes: the source latched, else its SDP's.
    pub a: Option<SocketAddr>,
    pub b: Option<SocketAddr>,
    /// What each party sent through the relay.
    pub from_a: Report,
    pub from_b: Report,
}

/// What a description does to one stream's SRTP keys once it went through.
struct KeyChange {
    edit: CryptoEdit,
    /// The SRTP party's key (from its description, see [`Keys::take_theirs`]),
    /// or the relay's new key for it (None: the relay's stays).
    key: Option<Key>,
    offered: Option<(u32, Suite)>,
}

/// Why a packet was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not from the latched source, or nowhere to send it yet.
    Source,
    /// SRTP that failed authentication or was replayed.
    Srtp(SrtpError),
    /// Not an RTP or RTCP packet.
    Malformed(PacketError),
}

/// Fills a buffer with bytes from a CSPRNG (SRTP keys).
pub type KeyGen = Box<dyn FnMut(&mut [u8]) + Send>;

/// Where a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The relay port to send from.
    pub from_port: u16,
    pub to: SocketAddr,
}

/// One line as the descriptions so far made it, kept while an offer is
/// pending (see [`Agreed`]).
#[derive(Debug, Clone)]
struct Terms {
    a_sdp: Option<SocketAddr>,
    b_sdp: Option<SocketAddr>,
    a_said: Option<SocketAddr>,
    b_said: Option<SocketAddr>,
    from_a: Latch,
    from_b: Latch,
    held: bool,
    kind: String,
    a_formats: Vec<Format>,
    b_formats: Vec<Format>,
    a_rtcp_port: Option<u16>,
    b_rtcp_port: Option<u16>,
    a_mux: bool,
    b_mux: bool,
    a_srtp: bool,
    b_srtp: bool,
    timing_a: Timing,
    timing_b: Timing,
    offered: Option<(u32, Suite)>,
    next: Option<Key>,
}

/// The media both parties last agreed on, kept from a new offer until its
/// answer: a refused offer (a re-INVITE or UPDATE that failed, 491 on
/// glare) leaves the session as it was (RFC 3264 §8), see
/// [`Session::withdraw`].
#[derive(Debug)]
struct Agreed {
    streams: Vec<Terms>,
    last: [Option<Said>; 2],
}

/// One call's relay state.
pub struct Session {
    relay: IpAddr,
    streams: Vec<Stream>,
    /// An answer was seen (the call's media is set up both ways).
    pub answered: bool,
    /// The party whose offer awaits an answer.
    pending_offer: Option<Side>,
    /// Which parties (A, B) made an offer that is neither answered nor
    /// withdrawn (both, on glare).
    outstanding: [bool; 2],
    /// Packets dropped: from a wrong source, or before the other side's
    /// address is known.
    pub dropped: u64,
    /// The party whose leg speaks SRTP with the relay, and where its keys
    /// come from.
    terminate: Option<(Side, KeyGen)>,
    /// Arrival times for jitter are counted from the first packet.
    epoch: Option<Instant>,
    /// The suite of the key the relay offers the SRTP party.
    offer_suite: Suite,
    /// Each party's last description and what the relay made of it (A, B).
    last: [Option<Said>; 2],
    /// While an offer in an answered call awaits its answer: what it
    /// replaces.
    agreed: Option<Agreed>,
}

/// A description as received and what was passed on for it: the same bytes again (a retransmitted 2xx, an ACK or
/// INVITE resent) get the same answer and change nothing. Taken anew, a
/// repeated answer would count as an offer (no offer is pending any more),
/// and the relay's SRTP key would change under a party that already has it.
#[derive(Debug, Clone)]
struct Said {
    input: Vec<u8>,
    output: Vec<u8>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("relay", &self.relay)
            .field("streams", &self.streams)
            .field("answered", &self.answered)
            .field("srtp_leg", &self.terminate.as_ref().map(|(s, _)| *s))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for KeyChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyChange")
            .field("edit", &self.edit)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn new(relay: IpAddr) -> Session {
        Session {
            relay,
            streams: Vec::new(),
            answered: false,
            pending_offer: None,
            outstanding: [false; 2],
            dropped: 0,
            terminate: None,
            epoch: None,
            offer_suite: Suite::AesCm128HmacSha1_80,
            last: [None, None],
            agreed: None,
        }
    }

    /// The relay terminates SRTP (SDES) on `side`'s leg: that party's
    /// packets are decrypted and checked, the other party gets plain RTP;
    /// the relay's own keys come from `keygen` (a CSPRNG).
    pub fn terminate_srtp(&mut self, side: Side, keygen: KeyGen) {
        self.terminate = Some((side, keygen));
    }

    /// The suite of the key the relay offers when the other party made the
    /// offer and the SRTP party is to answer (AES_CM_128_HMAC_SHA1_80 unless
    /// set). An offer from the SRTP party is answered in its own suite.
    pub fn offer_srtp_suite(&mut self, suite: Suite) {
        self.offer_suite = suite;
    }

    /// A description from `side`, whichever it is: the answer when the other
    /// side's offer awaits one, else an offer. (A proxy sees bodies, not the
    /// offer/answer roles; RFC 3264 §4 makes them follow from the order.)
    /// `repeat`: whether it may be a resend (see [`Repeat`]).
    pub fn describe(
        &mut self,
        pool: &mut PortPool,
        side: Side,
        sdp_bytes: &[u8],
        signalled_from: Option<IpAddr>,
        repeat: Repeat,
    ) -> Result<Vec<u8>, SessionError> {
        let slot = side as usize;
        // A resend changes nothing, roles included: a 2xx resent after the
        // ACK must not turn a late offer into one awaiting an answer again.
        // The same bytes in answer to a new offer (a session refresh, or
        // the other party's move) are that offer's answer all the same, and
        // are taken as one; but never from a response no transaction knows.
        let answers = self.pending_offer == Some(side.other()) && repeat == Repeat::Maybe;
        if matches!(repeat, Repeat::Maybe | Repeat::Only) && !answers {
            if let Some(said) = self.last[slot].as_ref().filter(|s| s.input == sdp_bytes) {
                return Ok(said.output.clone());
            }
        }
        if repeat == Repeat::Only {
            return Err(SessionError::NotAResend);
        }
        let offer = repeat == Repeat::Offer || self.pending_offer != Some(side.other());
        let output = if offer {
            self.offer(pool, side, sdp_bytes, signalled_from)?
        } else {
            self.answer(side, sdp_bytes, signalled_from)?
        };
        self.last[slot] = Some(Said {
            input: sdp_bytes.to_vec(),
            output: output.clone(),
        });
        Ok(output)
    }

    /// The party whose SRTP the relay terminates, if any.
    pub fn srtp_leg(&self) -> Option<Side> {
        self.terminate.as_ref().map(|(s, _)| *s)
    }

    /// True when the last description put every stream on hold
    /// (`sendonly`, `recvonly`, `inactive`): silence is expected, and the
    /// host's media timeout should wait longer.
    pub fn on_hold(&self) -> bool {
        !self.streams.is_empty() && self.streams.iter().all(|s| s.held)
    }

    /// The ports this session holds (RTP ports; RTCP is each + 1).
    pub fn ports(&self) -> Vec<u16> {
        self.streams
            .iter()
            .flat_map(|s| [s.facing_a, s.facing_b])
            .collect()
    }

    /// The ports that need a socket: each RTP port, and its RTCP port
    /// unless the last answer agreed to multiplex RTCP on the RTP port
    /// (RFC 5761: offer and answer carry `a=rtcp-mux`) and no pending offer
    /// goes without it (its answer may not multiplex). The RTCP port stays
    /// reserved either way.
    pub fn sockets(&self) -> Vec<u16> {
        let mut out = Vec::with_capacity(self.streams.len() * 4);
        for s in &self.streams {
            // A pending offer without it may be answered without it.
            let offer_keeps = match self.pending_offer {
                Some(Side::A) => s.a_mux,
                Some(Side::B) => s.b_mux,
                None => true,
            };
            for p in [s.facing_a, s.facing_b] {
                out.push(p);
                if !(s.muxed && offer_keeps) {
                    out.push(p + 1);
                }
            }
        }
        out
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
        // In an answered call, what this offer replaces until its answer
        // (glare: the first pending offer's still stands for it).
        let agreed = (self.answered && self.agreed.is_none()).then(|| Agreed {
            streams: self.streams.iter().map(Stream::terms).collect(),
            last: self.last.clone(),
        });
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
        let changes = match self.key_changes(side, &d, false) {
            Ok(c) => c,
            Err(e) => {
                self.forget_from(before, pool);
                return Err(e);
            }
        };
        let edits: Vec<CryptoEdit> = changes.iter().map(|c| c.edit.clone()).collect();
        let out = match sdp::rewrite_with(sdp_bytes, self.relay, &facing_other, &edits) {
            Ok(out) => out,
            Err(e) => {
                self.forget_from(before, pool);
                return Err(e.into());
            }
        };
        self.install(side, changes);
        self.learn(side, &d, signalled_from);
        self.pending_offer = Some(side);
        self.outstanding[side as usize] = true;
        if agreed.is_some() {
            self.agreed = agreed;
        }
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
        let changes = self.key_changes(side, &d, true)?;
        let edits: Vec<CryptoEdit> = changes.iter().map(|c| c.edit.clone()).collect();
        let out = sdp::rewrite_with(sdp_bytes, self.relay, &self.facing(side.other()), &edits)?;
        self.install(side, changes);
        self.learn(side, &d, signalled_from);
        for s in &mut self.streams {
            s.muxed = s.a_mux && s.b_mux;
        }
        self.answered = true;
        self.pending_offer = None;
        self.outstanding = [false; 2];
        self.agreed = None;
        Ok(out)
    }

    /// The offer `side` made was refused (its re-INVITE or UPDATE failed,
    /// or never went out): the session is again what both parties last
    /// agreed on, and the ports of media lines the offer added go back.
    /// False when `side` has no offer outstanding in an answered call
    /// (nothing changes).
    ///
    /// On glare both offers are outstanding and both requests fail (491):
    /// the first refusal takes the session back, the second finds nothing.
    pub fn withdraw(&mut self, pool: &mut PortPool, side: Side) -> bool {
        if !self.outstanding[side as usize] {
            return false;
        }
        let Some(agreed) = self.agreed.take() else {
            return false;
        };
        self.pending_offer = None;
        self.outstanding = [false; 2];
        self.forget_from(agreed.streams.len(), pool);
        for (s, t) in self.streams.iter_mut().zip(agreed.streams) {
            s.restore(t);
        }
        self.last = agreed.last;
        true
    }

    /// Gives every port back (BYE, CANCEL, a failed call, a media timeout).
    pub fn release(&mut self, pool: &mut PortPool) {
        for p in self.ports() {
            pool.release(p);
        }
        self.streams.clear();
        self.last = [None, None];
        self.agreed = None;
    }

    /// A well-formed packet arrived on relay port `port` from `from`: where it
    /// goes, or None (dropped and counted).
    pub fn route(&mut self, port: u16, from: SocketAddr) -> Option<Route> {
        self.route_from(port, from).map(|(_, _, r)| r)
    }

    /// Like [`Session::route`], for the packet itself, arrived at `now`:
    /// checked (RTP or RTCP), counted in its stream's statistics and, where
    /// the relay terminates SRTP, checked and decrypted coming from that
    /// party and encrypted going to it, in place; a payload type the
    /// receiver knows under another number is renumbered (see `Timing`).
    pub fn forward(
        &mut self,
        now: Instant,
        port: u16,
        from: SocketAddr,
        packet: &mut Vec<u8>,
    ) -> Result<Route, Refused> {
        // From the party whose SRTP the relay terminates, the last bytes are
        // the tag: RTP padding is checked once decrypted.
        let srtp_port = self
            .terminate
            .as_ref()
            .is_some_and(|(s, _)| self.sender_of(port) == Some(*s));
        let kind = if srtp_port {
            rtp::classify_header(packet)
        } else {
            rtp::classify(packet)
        }
        .map_err(Refused::Malformed)?;
        let (i, sender, route) = self.route_from(port, from).ok_or(Refused::Source)?;
        let srtp_party = self.terminate.as_ref().map(|(s, _)| *s);
        let terminating = srtp_party.is_some();
        let at = now.saturating_duration_since(*self.epoch.get_or_insert(now));
        let stream = &mut self.streams[i];
        let (timing, reception) = match sender {
            Side::A => (&stream.timing_a, &mut stream.rx_a),
            Side::B => (&stream.timing_b, &mut stream.rx_b),
        };
        let rtcp = port % 2 == 1 || matches!(kind, Packet::Rtcp { .. });
        if srtp_party == Some(sender) {
            // Without a key it is refused, never forwarded as if plain.
            stream.keys.open(rtcp, packet).map_err(Refused::Srtp)?;
            if !rtcp {
                rtp::classify(packet).map_err(Refused::Malformed)?;
            }
        }
        match kind {
            Packet::Rtp {
                payload_type,
                sequence,
                timestamp,
                ssrc,
                ..
            } if !rtcp => {
                // SRTP passed end to end authenticates its header: left be.
                let mut pt = payload_type;
                if terminating || !(stream.a_srtp || stream.b_srtp) {
                    if let Some(theirs) = timing.renumber(pt) {
                        packet[1] = (packet[1] & 0x80) | theirs;
                        pt = theirs;
                        reception.mapped();
                    }
                }
                let (clock, dtmf) = timing.clock(pt);
                let header = stats::Header {
                    payload_type: pt,
                    sequence,
                    timestamp,
                    ssrc,
                };
                reception.rtp(at, header, packet.len(), clock, dtmf);
            }
            _ => reception.rtcp(packet.len()),
        }
        if srtp_party == Some(sender.other()) {
            // Plain media never goes to the SRTP party, keyed or not.
            stream.keys.seal(rtcp, packet).map_err(Refused::Srtp)?;
        }
        Ok(route)
    }

    /// Each media line: where its media goes and what each party sent.
    pub fn report(&self) -> Vec<StreamReport> {
        self.streams.iter().map(Stream::report).collect()
    }

    /// Which party sends to relay port `port` (RTP or RTCP).
    fn sender_of(&self, port: u16) -> Option<Side> {
        let rtp_port = port & !1;
        self.streams.iter().find_map(|s| {
            if s.facing_a == rtp_port {
                Some(Side::A)
            } else if s.facing_b == rtp_port {
                Some(Side::B)
            } else {
                None
            }
        })
    }

    /// The stream, the sending side and the route of a packet.
    fn route_from(&mut self, port: u16, from: SocketAddr) -> Option<(usize, Side, Route)> {
        let rtcp = port % 2 == 1;
        let rtp_port = port - u16::from(rtcp);
        let Some(i) = self
            .streams
            .iter()
            .position(|s| s.facing_a == rtp_port || s.facing_b == rtp_port)
        else {
            self.dropped += 1;
            return None;
        };
        let s = &mut self.streams[i];
        let sender = if s.facing_a == rtp_port {
            Side::A
        } else {
            Side::B
        };
        let to = match sender {
            Side::A => s.destination(Side::B, rtcp),
            Side::B => s.destination(Side::A, rtcp),
        };
        let (latch, out_port) = match sender {
            Side::A => (&mut s.from_a, s.facing_b),
            Side::B => (&mut s.from_b, s.facing_a),
        };
        let verdict = if rtcp {
            latch.check_rtcp(from)
        } else {
            latch.check(from)
        };
        let Some(to) = to.filter(|_| verdict != Verdict::Drop) else {
            self.dropped += 1;
            return None;
        };
        Some((
            i,
            sender,
            Route {
                from_port: out_port + u16::from(rtcp),
                to,
            },
        ))
    }

    /// What a description from `side` does to the SRTP keys of each active
    /// line, worked out without changing anything (see `terminate_srtp`).
    fn key_changes(
        &mut self,
        side: Side,
        d: &Description,
        answering: bool,
    ) -> Result<Vec<KeyChange>, SessionError> {
        let active: Vec<&sdp::MediaLine> = d.media.iter().filter(|m| m.port != 0).collect();
        let Some((srtp_side, keygen)) = self.terminate.as_mut() else {
            return Ok(Vec::new());
        };
        let srtp_side = *srtp_side;
        let mut out = Vec::with_capacity(active.len());
        for (i, m) in active.iter().enumerate() {
            if side == srtp_side {
                // The SRTP party's key: the first suite the relay runs.
                let mut refused = Vec::new();
                let theirs = m.crypto.iter().find_map(|v| {
                    match Crypto::parse(v)
                        .map_err(|e| e.to_string())
                        .and_then(|c| Key::new(c).map_err(|e| e.to_string()))
                    {
                        Ok(k) => Some(k),
                        Err(e) => {
                            refused.push(e);
                            None
                        }
                    }
                });
                let Some(key) = theirs else {
                    let why = if m.crypto.is_empty() {
                        "no a=crypto on the SRTP leg".to_string()
                    } else {
                        format!(
                            "no a=crypto the relay can terminate (AES_CM_128_HMAC_SHA1_80/32, AEAD_AES_128_GCM): {}",
                            refused.join("; ")
                        )
                    };
                    return Err(SessionError::Srtp(why));
                };
                let offered = (!answering).then_some((key.crypto.tag, key.crypto.suite));
                out.push(KeyChange {
                    edit: CryptoEdit::Strip,
                    key: Some(key),
                    offered,
                });
            } else {
                // The relay's key for the SRTP party: the one it has, in the
                // suite (and under the tag) its offer asked for when
                // answering; a fresh one where it has none that fits.
                let (tag, suite) = if answering {
                    self.streams
                        .get(i)
                        .and_then(|s| s.keys.offered)
                        .ok_or_else(|| SessionError::Srtp("no SRTP offer to answer".into()))?
                } else {
                    self.streams
                        .get(i)
                        .and_then(|s| s.keys.ours.as_ref())
                        .map_or((1, self.offer_suite), |k| (k.crypto.tag, k.crypto.suite))
                };
                let current = self
                    .streams
                    .get(i)
                    .and_then(|s| s.keys.ours.as_ref())
                    .filter(|k| k.crypto.suite == suite);
                let (crypto, key) = match current {
                    Some(k) => (
                        Crypto {
                            tag,
                            ..k.crypto.clone()
                        },
                        None,
                    ),
                    None => {
                        let ours = Crypto::generate(tag, suite, |b| keygen(b));
                        let key = Key::new(ours.clone())
                            .map_err(|e| SessionError::Srtp(e.to_string()))?;
                        (ours, Some(key))
                    }
                };
                out.push(KeyChange {
                    edit: CryptoEdit::Set(crypto.to_value()),
                    key,
                    offered: None,
                });
            }
        }
        Ok(out)
    }

    /// Installs the keys of a description from `side` that went through.
    fn install(&mut self, side: Side, changes: Vec<KeyChange>) {
        let Some(srtp_side) = self.terminate.as_ref().map(|(s, _)| *s) else {
            return;
        };
        for (s, c) in self.streams.iter_mut().zip(changes) {
            if side == srtp_side {
                if let Some(key) = c.key {
                    s.keys.take_theirs(key);
                }
                s.keys.offered = c.offered;
            } else if let Some(key) = c.key {
                s.keys.ours = Some(key);
            }
        }
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
            s.held = m.held;
            s.kind.clone_from(&m.kind);
            match side {
                Side::A => {
                    s.a_formats.clone_from(&m.formats);
                    s.a_srtp = m.srtp;
                    s.a_mux = m.rtcp_mux;
                    s.a_rtcp_port = m.rtcp_port;
                }
                Side::B => {
                    s.b_formats.clone_from(&m.formats);
                    s.b_srtp = m.srtp;
                    s.b_mux = m.rtcp_mux;
                    s.b_rtcp_port = m.rtcp_port;
                }
            }
            s.timing_a = Timing::new(&s.a_formats, &s.b_formats);
            s.timing_b = Timing::new(&s.b_formats, &s.a_formats);
            let reachable = !sdp::is_private(m.address) || signalled_from == Some(m.address);
            let addr = reachable.then(|| SocketAddr::new(m.address, m.port));
            let said = Some(SocketAddr::new(m.address, m.port));
            let (sdp_addr, latch, last) = match side {
                Side::A => (&mut s.a_sdp, &mut s.from_a, &mut s.a_said),
                Side::B => (&mut s.b_sdp, &mut s.from_b, &mut s.b_said),
            };
            *sdp_addr = addr;
            if *last != said {
                *latch = Latch::with_signalling(m.address, signalled_from);
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

    /// `side`'s description `sdp`, taken (see [`Session::describe`]): what
    /// the other party gets.
    fn say(s: &mut Session, pool: &mut PortPool, side: Side, sdp: &str, repeat: Repeat) -> Vec<u8> {
        s.describe(pool, side, sdp.as_bytes(), None, repeat)
            .unwrap()
    }

    /// A session terminating `side`'s SRTP, whose keys are 1s, then 2s…
    fn srtp_session(side: Side) -> Session {
        let mut s = Session::new("203.0.113.7".parse().unwrap());
        let mut n = 0u8;
        s.terminate_srtp(
            side,
            Box::new(move |b| {
                n = n.wrapping_add(1);
                b.fill(n);
            }),
        );
        s
    }

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn now() -> Instant {
        Instant::now()
    }

    /// An RTP packet: payload type, sequence number, timestamp, 160 bytes.
    fn rtp(pt: u8, seq: u16, ts: u32) -> Vec<u8> {
        let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 0, 0, 0, 0, 42];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&[0xff; 160]);
        p
    }

    /// A call from A (offer) to B (answer) with these `m=` formats and
    /// rtpmaps, each on its own port: (session, facing A, facing B, A, B).
    fn call(
        pool: &mut PortPool,
        a_media: &str,
        b_media: &str,
    ) -> (Session, u16, u16, SocketAddr, SocketAddr) {
        let sdp = |addr: &str, port: u16, media: &str| {
            format!(
                "v=0\r\no=x 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\nm=audio {port} {media}\r\n"
            )
        };
        let mut s = Session::new("203.0.113.7".parse().unwrap());
        s.offer(
            pool,
            Side::A,
            sdp("198.51.100.1", 4000, a_media).as_bytes(),
            None,
        )
        .unwrap();
        s.answer(Side::B, sdp("198.51.100.2", 5000, b_media).as_bytes(), None)
            .unwrap();
        let (fa, fb) = (s.ports()[0], s.ports()[1]);
        (
            s,
            fa,
            fb,
            sock("198.51.100.1:4000"),
            sock("198.51.100.2:5000"),
        )
    }

    #[test]
    fn each_direction_is_counted_and_dtmf_is_renumbered_where_the_legs_differ() {
        let mut pool = PortPool::new(30000, 30099).unwrap();
        // The carrier (A) calls DTMF 101, the agent (B) 96.
        let (mut s, fa, fb, a, b) = call(
            &mut pool,
            "RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000",
            "RTP/AVP 0 96\r\na=rtpmap:96 telephone-event/8000",
        );
        let t0 = now();
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        // A sends 50 packets of audio (one lost on its way: seq 20), on time.
        for seq in (0..50u16).filter(|s| *s != 20) {
            let mut p = rtp(0, seq, u32::from(seq) * 160);
            s.forward(at(20 * u64::from(seq)), fa, a, &mut p).unwrap();
            assert_eq!(p[1], 0, "audio keeps its number");
        }
        // Then DTMF: as RFC 3264 says (B's 96), and with its own 101, which
        // B never declared: renumbered, marker bit kept.
        let mut p = rtp(96, 50, 8000);
        s.forward(at(1000), fa, a, &mut p).unwrap();
        assert_eq!(p[1], 96);
        let mut p = rtp(0x80 | 101, 51, 8000);
        s.forward(at(1020), fa, a, &mut p).unwrap();
        assert_eq!(p[1], 0x80 | 96);
        // B's events with its own 96 reach A as 101.
        let mut p = rtp(96, 7, 0);
        assert_eq!(s.forward(at(1040), fb, b, &mut p).unwrap().to, a);
        assert_eq!(p[1], 101);
        // RTCP is counted apart.
        let mut rtcp = vec![0x80, 200, 0, 1, 0, 0, 0, 42];
        s.forward(at(1060), fa + 1, a, &mut rtcp).unwrap();

        let report = s.report();
        assert_eq!(report.len(), 1);
        let (from_a, from_b) = (report[0].from_a, report[0].from_b);
        assert_eq!(report[0].kind, "audio");
        assert_eq!((report[0].a, report[0].b), (Some(a), Some(b)));
        assert_eq!(
            (
                from_a.packets,
                from_a.rtcp_packets,
                from_a.dtmf_packets,
                from_a.expected,
                from_a.lost,
                from_a.payload_types_mapped
            ),
            (52, 1, 2, 52, 1, 1)
        );
        assert_eq!(from_a.bytes, 51 * 172 + 8);
        assert!(from_a.jitter_ms < 1e-9, "on time: {from_a:?}");
        assert_eq!(
            (
                from_b.packets,
                from_b.dtmf_packets,
                from_b.payload_types_mapped
            ),
            (1, 1, 1)
        );
    }

    #[test]
    fn srtp_passed_end_to_end_is_never_renumbered_and_junk_is_refused() {
        let mut pool = PortPool::new(30000, 30099).unwrap();
        let (mut s, fa, _, a, _) = call(
            &mut pool,
            "RTP/SAVP 0 101\r\na=rtpmap:101 telephone-event/8000",
            "RTP/SAVP 0 96\r\na=rtpmap:96 telephone-event/8000",
        );
        // Its header is authenticated: a changed byte would fail at B.
        let mut p = rtp(101, 1, 0);
        s.forward(now(), fa, a, &mut p).unwrap();
        assert_eq!(p[1], 101);
        assert_eq!(s.report()[0].from_a.payload_types_mapped, 0);
        let mut junk = b"not rtp".to_vec();
        assert_eq!(
            s.forward(now(), fa, a, &mut junk),
            Err(Refused::Malformed(PacketError::Short))
        );
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
        let (b_sdp, a_sdp) = (offer("10.1.1.1", 5000), offer("198.51.100.1", 4000));
        say(&mut s, &mut pool, Side::B, &b_sdp, Repeat::Maybe);
        assert!(!s.answered);
        say(&mut s, &mut pool, Side::A, &a_sdp, Repeat::Maybe);
        assert!(s.answered);
        let facing_b = s.ports()[1];
        let nat = sock("192.0.2.9:7000");
        assert!(s.route(facing_b, nat).is_some(), "the private side latches");
        // A retransmitted 200 (or a hold re-INVITE naming the same address)
        // must not reopen the latch to whoever sends first.
        say(&mut s, &mut pool, Side::B, &b_sdp, Repeat::Maybe);
        assert_eq!(s.route(facing_b, sock("203.0.113.66:7000")), None);
        assert!(s.route(facing_b, nat).is_some());
        assert_eq!(pool.in_use(), 2);
    }

    #[test]
    fn a_resent_description_gets_the_same_answer_and_changes_nothing() {
        // SRTP terminated on B's leg: the relay offers B a key of its own.
        let mut pool = PortPool::new(30000, 30099).unwrap();
        let mut s = srtp_session(Side::B);
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        let a_offer = offer("198.51.100.1", 4000);
        let to_b = text(
            s.describe(&mut pool, Side::A, a_offer.as_bytes(), None, Repeat::Never)
                .unwrap(),
        );
        let b_key = Crypto::generate(1, Suite::AesCm128HmacSha1_80, |b| b.fill(9));
        let b_answer = format!(
            "v=0\r\no=- 1 1 IN IP4 198.51.100.2\r\ns=-\r\nc=IN IP4 198.51.100.2\r\nt=0 0\r\n\
m=audio 5000 RTP/SAVP 0\r\na=crypto:{}\r\n",
            b_key.to_value()
        );
        let to_a = say(&mut s, &mut pool, Side::B, &b_answer, Repeat::Maybe);
        assert!(s.answered);
        // The 200 resent (in or after its transaction): the same plain SDP
        // for A, never B's key; the roles stay: A's next offer is an offer.
        for repeat in [Repeat::Maybe, Repeat::Only] {
            let resent = s
                .describe(&mut pool, Side::B, b_answer.as_bytes(), None, repeat)
                .unwrap();
            assert_eq!(resent, to_a);
            assert!(!text(resent).contains("crypto"));
        }
        // A late response with other SDP (another fork's 2xx): refused.
        let other = b_answer.replace("5000", "5002");
        assert_eq!(
            s.describe(&mut pool, Side::B, other.as_bytes(), None, Repeat::Only),
            Err(SessionError::NotAResend)
        );
        // A session refresh: A's INVITE in the same bytes is a new offer
        // (the relay keeps its key for B: no re-keying), and B's answer in
        // its old bytes completes it: B's own re-INVITE afterwards is an
        // offer again.
        let refresh = text(
            s.describe(&mut pool, Side::A, a_offer.as_bytes(), None, Repeat::Offer)
                .unwrap(),
        );
        assert_eq!(refresh, to_b, "the same ports and the same key");
        say(&mut s, &mut pool, Side::B, &b_answer, Repeat::Maybe);
        let b_reoffer = b_answer.replace("5000", "5004");
        let to_a2 = text(
            s.describe(
                &mut pool,
                Side::B,
                b_reoffer.as_bytes(),
                None,
                Repeat::Never,
            )
            .unwrap(),
        );
        assert!(!to_a2.contains("crypto"), "an offer to A, plain");
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

    #[test]
    fn srtp_is_terminated_on_one_leg_and_plain_rtp_flows_on_the_other() {
        for suite in [Suite::AesCm128HmacSha1_80, Suite::AeadAes128Gcm] {
            srtp_termination(suite);
        }
    }

    fn srtp_termination(suite: Suite) {
        let mut pool = PortPool::new(30000, 30099).unwrap();
        let mut s = Session::new("203.0.113.7".parse().unwrap());
        let mut counter = 0u8;
        s.terminate_srtp(
            Side::A,
            Box::new(move |b| {
                for x in b.iter_mut() {
                    counter = counter.wrapping_add(37);
                    *x = counter;
                }
            }),
        );
        let a_key = Crypto::generate(1, suite, |b| b.fill(9));
        let a_offer = format!(
            "v=0\r\no=- 1 1 IN IP4 198.51.100.1\r\ns=-\r\nc=IN IP4 198.51.100.1\r\nt=0 0\r\n\
m=audio 4000 RTP/SAVP 0\r\na=crypto:{}\r\n",
            a_key.to_value()
        );
        let to_b = s
            .offer(&mut pool, Side::A, a_offer.as_bytes(), None)
            .unwrap();
        let to_b = String::from_utf8(to_b).unwrap();
        assert!(
            to_b.contains(" RTP/AVP 0") && !to_b.contains("crypto"),
            "{to_b}"
        );
        let to_a = s
            .answer(Side::B, offer("198.51.100.2", 5000).as_bytes(), None)
            .unwrap();
        let to_a = sdp::inspect(&to_a).unwrap();
        assert_eq!(to_a.media[0].crypto.len(), 1);
        let relay_key = Crypto::parse(&to_a.media[0].crypto[0]).unwrap();
        assert_eq!((relay_key.tag, relay_key.suite), (1, suite), "as offered");
        assert_ne!(relay_key.key, a_key.key, "the relay's own key");
        let (facing_a, facing_b) = (s.ports()[0], s.ports()[1]);
        let (a, b) = (sock("198.51.100.1:4000"), sock("198.51.100.2:5000"));

        // A → B: SRTP in, RTP out.
        let plain = |seq: u8| {
            let mut p = vec![0x80, 0, 0, seq, 0, 0, 0, 1, 0, 0, 0, 42];
            p.extend_from_slice(b"twenty bytes of pcmu");
            p
        };
        let mut a_tx = srtp::Context::new(&a_key).unwrap();
        let mut p = plain(1);
        a_tx.protect_rtp(&mut p).unwrap();
        let sent = p.clone();
        assert_eq!(s.forward(now(), facing_a, a, &mut p).unwrap().to, b);
        assert_eq!(p, plain(1));
        // Replayed and tampered packets: refused.
        let mut again = sent;
        assert_eq!(
            s.forward(now(), facing_a, a, &mut again),
            Err(Refused::Srtp(SrtpError::Replay))
        );
        let mut p = plain(2);
        a_tx.protect_rtp(&mut p).unwrap();
        p[13] ^= 0x80;
        assert_eq!(
            s.forward(now(), facing_a, a, &mut p),
            Err(Refused::Srtp(SrtpError::Auth))
        );

        // B → A: RTP in, SRTP out with the relay's key.
        let mut p = plain(7);
        assert_eq!(s.forward(now(), facing_b, b, &mut p).unwrap().to, a);
        assert_ne!(p, plain(7));
        let mut a_rx = srtp::Context::new(&relay_key).unwrap();
        a_rx.unprotect_rtp(&mut p).unwrap();
        assert_eq!(p, plain(7));
    }

    #[test]
    fn an_srtp_leg_without_usable_keys_is_refused() {
        let mut pool = PortPool::new(30000, 30099).unwrap();
        let mut s = Session::new("203.0.113.7".parse().unwrap());
        s.terminate_srtp(Side::A, Box::new(|b| b.fill(1)));
        let e = s
            .offer(
                &mut pool,
                Side::A,
                offer("198.51.100.1", 4000).as_bytes(),
                None,
            )
            .unwrap_err();
        assert_eq!(e.sip_status().0, 488);
        assert!(e.to_string().contains("no a=crypto"), "{e}");
        assert_eq!(pool.in_use(), 0, "nothing held");
    }

    #[test]
    fn a_hold_re_invite_is_seen_and_a_resume_ends_it() {
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
        assert!(!s.on_hold());
        let hold = offer("198.51.100.1", 4000).replace("m=audio", "a=inactive\r\nm=audio");
        s.offer(&mut pool, Side::A, hold.as_bytes(), None).unwrap();
        assert!(s.on_hold(), "session-level a=inactive");
        let answer = format!("{}a=inactive\r\n", offer("198.51.100.2", 5000));
        s.answer(Side::B, answer.as_bytes(), None).unwrap();
        assert!(s.on_hold());
        s.offer(
            &mut pool,
            Side::A,
            offer("198.51.100.1", 4000).as_bytes(),
            None,
        )
        .unwrap();
        s.answer(Side::B, offer("198.51.100.2", 5000).as_bytes(), None)
            .unwrap();
        assert!(!s.on_hold(), "resumed");
    }

    #[test]
    fn a_refused_re_offer_leaves_the_call_as_it_was() {
        let mut pool = PortPool::new(30000, 30099).unwrap();
        let (mut s, fa, fb, a, b) = call(&mut pool, "RTP/AVP 0", "RTP/AVP 0");
        let mut p = rtp(0, 1, 160);
        assert_eq!(s.forward(now(), fa, a, &mut p).unwrap().to, b);
        // A moves and adds video; B refuses it (488, or 491 on glare).
        let moved = format!(
            "{}m=video 4010 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n",
            offer("198.51.100.9", 4002)
        );
        say(&mut s, &mut pool, Side::A, &moved, Repeat::Offer);
        assert_eq!((s.ports().len(), pool.in_use()), (4, 4));
        assert!(!s.withdraw(&mut pool, Side::B), "B made no offer");
        assert!(s.withdraw(&mut pool, Side::A));
        assert!(!s.withdraw(&mut pool, Side::A), "nothing pending any more");
        assert_eq!(
            (s.ports(), pool.in_use()),
            (vec![fa, fb], 2),
            "video's ports back"
        );
        // A's media still comes from where it was heard and goes where it
        // was going; B's goes to A's old address.
        let mut p = rtp(0, 2, 320);
        assert_eq!(s.forward(now(), fa, a, &mut p).unwrap().to, b);
        let mut p = rtp(0, 1, 160);
        assert_eq!(s.forward(now(), fb, b, &mut p).unwrap().to, a);
        let mut p = rtp(0, 3, 480);
        assert_eq!(
            s.forward(now(), fa, sock("198.51.100.9:4002"), &mut p),
            Err(Refused::Source),
            "the refused offer's address never latched"
        );
        // No offer pending: B's answer-shaped SDP in a PRACK or a 2xx
        // is an offer now, and its answer completes it.
        say(
            &mut s,
            &mut pool,
            Side::B,
            &offer("198.51.100.2", 5000),
            Repeat::Never,
        );
        say(
            &mut s,
            &mut pool,
            Side::A,
            &offer("198.51.100.1", 4000),
            Repeat::Maybe,
        );
        assert!(
            !s.withdraw(&mut pool, Side::B),
            "answered: nothing to withdraw"
        );

        // B moves; A's answer repeats its last bytes (its o= version
        // unchanged): the answer all the same. A refused hold of A's later
        // leaves B where it moved.
        say(
            &mut s,
            &mut pool,
            Side::B,
            &offer("198.51.100.2", 5002),
            Repeat::Offer,
        );
        say(
            &mut s,
            &mut pool,
            Side::A,
            &offer("198.51.100.1", 4000),
            Repeat::Maybe,
        );
        let hold = format!("{}a=sendonly\r\n", offer("198.51.100.1", 4000));
        say(&mut s, &mut pool, Side::A, &hold, Repeat::Offer);
        assert!(s.withdraw(&mut pool, Side::A));
        let mut p = rtp(0, 4, 640);
        assert_eq!(
            s.forward(now(), fa, a, &mut p).unwrap().to,
            sock("198.51.100.2:5002"),
            "B's move was answered: it stays"
        );
        // A moves and is heard there before its offer is refused: where its
        // packets come from is kept (a handover), where they go too.
        let moved = offer("198.51.100.9", 4002);
        say(&mut s, &mut pool, Side::A, &moved, Repeat::Offer);
        let there = sock("198.51.100.9:4002");
        let mut p = rtp(0, 5, 800);
        assert!(s.forward(now(), fa, there, &mut p).is_ok());
        assert!(s.withdraw(&mut pool, Side::A));
        let mut p = rtp(0, 6, 960);
        assert!(s.forward(now(), fa, there, &mut p).is_ok(), "still latched");
        let mut p = rtp(0, 2, 320);
        assert_eq!(
            s.forward(now(), fb, sock("198.51.100.2:5002"), &mut p)
                .unwrap()
                .to,
            there
        );
    }

    #[test]
    fn glare_takes_both_offers_as_offers_and_withdraws_to_what_was_agreed() {
        let mut pool = PortPool::new(30000, 30099).unwrap();
        let (mut s, fa, fb, a, b) = call(&mut pool, "RTP/AVP 0", "RTP/AVP 0");
        // Both re-INVITE at once, each moving its media: B's offer is no
        // answer to A's.
        let held = format!("{}a=sendonly\r\n", offer("198.51.100.1", 4004));
        say(&mut s, &mut pool, Side::A, &held, Repeat::Offer);
        say(
            &mut s,
            &mut pool,
            Side::B,
            &offer("198.51.100.2", 5008),
            Repeat::Offer,
        );
        assert!(s.withdraw(&mut pool, Side::B), "B's offer is no answer");
        // Both failed with 491: each party's media goes where it went.
        assert!(!s.withdraw(&mut pool, Side::A));
        let mut p = rtp(0, 1, 160);
        assert_eq!(
            s.forward(now(), fa, a, &mut p).unwrap().to,
            b,
            "B's old port"
        );
        let mut p = rtp(0, 1, 160);
        assert_eq!(
            s.forward(now(), fb, b, &mut p).unwrap().to,
            a,
            "A's old port"
        );
        assert!(!s.on_hold());
    }

    /// SDP with one SRTP audio line under `key`.
    fn savp(addr: &str, port: u16, key: &Crypto) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\n\
m=audio {port} RTP/SAVP 0\r\na=crypto:{}\r\n",
            key.to_value()
        )
    }

    #[test]
    fn srtp_contexts_outlive_re_invites_and_a_new_key_takes_over_once_heard() {
        let mut pool = PortPool::new(30000, 30099).unwrap();
        let mut s = srtp_session(Side::A);
        let (a, b) = (sock("198.51.100.1:4000"), sock("198.51.100.2:5000"));
        let old = Crypto::generate(1, Suite::AesCm128HmacSha1_80, |k| k.fill(7));
        let new = Crypto::generate(1, Suite::AesCm128HmacSha1_80, |k| k.fill(8));
        let to_b = say(
            &mut s,
            &mut pool,
            Side::A,
            &savp("198.51.100.1", 4000, &old),
            Repeat::Offer,
        );
        assert!(!String::from_utf8(to_b).unwrap().contains("crypto"));
        let answer = say(
            &mut s,
            &mut pool,
            Side::B,
            &offer("198.51.100.2", 5000),
            Repeat::Maybe,
        );
        let (fa, fb) = (s.ports()[0], s.ports()[1]);
        let mut sender = srtp::Context::new(&old).unwrap();
        let send = |ctx: &mut srtp::Context, s: &mut Session, seq: u16| {
            let mut p = rtp(0, seq, u32::from(seq) * 160);
            ctx.protect_rtp(&mut p).unwrap();
            s.forward(now(), fa, a, &mut p).map(|_| p)
        };
        // Past the first rollover of the sequence number (ROC 1).
        for seq in [65_530u16, 65_535, 0, 1] {
            assert!(send(&mut sender, &mut s, seq).is_ok(), "seq {seq}");
        }
        // A hold and a resume in A's same key, one from each party: the
        // context (its rollover counter) goes on, and the relay's key too.
        let held = format!("{}a=sendonly\r\n", savp("198.51.100.1", 4000, &old));
        say(&mut s, &mut pool, Side::A, &held, Repeat::Offer);
        let again = say(
            &mut s,
            &mut pool,
            Side::B,
            &offer("198.51.100.2", 5000),
            Repeat::Maybe,
        );
        assert_eq!(again, answer, "the relay's key is kept");
        let to_a = say(
            &mut s,
            &mut pool,
            Side::B,
            &offer("198.51.100.2", 5000),
            Repeat::Offer,
        );
        let relay_key = |sdp: &[u8]| sdp::inspect(sdp).unwrap().media[0].crypto[0].clone();
        assert_eq!(relay_key(&to_a), relay_key(&answer));
        say(
            &mut s,
            &mut pool,
            Side::A,
            &savp("198.51.100.1", 4000, &old),
            Repeat::Maybe,
        );
        assert!(send(&mut sender, &mut s, 2).is_ok(), "ROC 1 still known");
        // What the relay sends A decrypts under the key it gave A first.
        let mut rx = srtp::Context::new(&Crypto::parse(&relay_key(&answer)).unwrap()).unwrap();
        let mut p = rtp(0, 9, 1440);
        s.forward(now(), fb, b, &mut p).unwrap();
        rx.unprotect_rtp(&mut p).unwrap();

        // A re-offers a new key; B refuses: the old key goes on, the new
        // one is never taken.
        let mut renewed = srtp::Context::new(&new).unwrap();
        say(
            &mut s,
            &mut pool,
            Side::A,
            &savp("198.51.100.1", 4000, &new),
            Repeat::Offer,
        );
        assert!(
            send(&mut sender, &mut s, 3).is_ok(),
            "the old key until the answer"
        );
        assert!(s.withdraw(&mut pool, Side::A));
        assert_eq!(
            send(&mut renewed, &mut s, 4),
            Err(Refused::Srtp(SrtpError::Auth))
        );
        assert!(send(&mut sender, &mut s, 5).is_ok());
        // Again, accepted: packets under either key pass until the first
        // under the new one; then only the new one does.
        say(
            &mut s,
            &mut pool,
            Side::A,
            &savp("198.51.100.1", 4000, &new),
            Repeat::Offer,
        );
        say(
            &mut s,
            &mut pool,
            Side::B,
            &offer("198.51.100.2", 5000),
            Repeat::Maybe,
        );
        assert!(
            send(&mut sender, &mut s, 6).is_ok(),
            "in flight under the old key"
        );
        assert!(send(&mut renewed, &mut s, 7).is_ok(), "the new key, heard");
        assert_eq!(
            send(&mut sender, &mut s, 8),
            Err(Refused::Srtp(SrtpError::Auth))
        );
        assert!(send(&mut renewed, &mut s, 9).is_ok());
        // A third key, agreed but not heard yet, then a fourth refused:
        // the third is still the one A moves to.
        let third = Crypto::generate(1, Suite::AesCm128HmacSha1_80, |k| k.fill(10));
        let fourth = Crypto::generate(1, Suite::AesCm128HmacSha1_80, |k| k.fill(11));
        for (key, answered) in [(&third, true), (&fourth, false)] {
            say(
                &mut s,
                &mut pool,
                Side::A,
                &savp("198.51.100.1", 4000, key),
                Repeat::Offer,
            );
            if answered {
                say(
                    &mut s,
                    &mut pool,
                    Side::B,
                    &offer("198.51.100.2", 5000),
                    Repeat::Maybe,
                );
            }
        }
        assert!(s.withdraw(&mut pool, Side::A));
        let mut refused = srtp::Context::new(&fourth).unwrap();
        assert_eq!(
            send(&mut refused, &mut s, 10),
            Err(Refused::Srtp(SrtpError::Auth))
        );
        assert!(send(&mut renewed, &mut s, 11).is_ok(), "the second, until…");
        let mut agreed = srtp::Context::new(&third).unwrap();
        assert!(send(&mut agreed, &mut s, 12).is_ok(), "…the third is heard");
        assert_eq!(
            send(&mut renewed, &mut s, 13),
            Err(Refused::Srtp(SrtpError::Auth))
        );
    }

    #[test]
    fn plain_media_never_reaches_the_srtp_party_before_its_key() {
        // A's leg is SRTP: until the relay has answered A with its key,
        // nothing B sends goes to A (it used to go plain).
        let mut pool = PortPool::new(30000, 30099).unwrap();
        let mut s = Session::new("203.0.113.7".parse().unwrap());
        s.terminate_srtp(Side::A, Box::new(|b| b.fill(3)));
        let key = Crypto::generate(1, Suite::AesCm128HmacSha1_80, |k| k.fill(7));
        say(
            &mut s,
            &mut pool,
            Side::A,
            &savp("198.51.100.1", 4000, &key),
            Repeat::Offer,
        );
        let fb = s.ports()[1];
        // B's early packet, before the relay answered A with its key.
        let mut p = rtp(0, 1, 160);
        assert_eq!(
            s.forward(now(), fb, sock("198.51.100.2:5000"), &mut p),
            Err(Refused::Srtp(SrtpError::NoKey))
        );
    }

    #[test]
    fn rtcp_sockets_are_needed_until_both_parties_multiplex() {
        let mut pool = PortPool::new(30000, 30099).unwrap();
        let mux = |sdp: String| format!("{sdp}a=rtcp-mux\r\n");
        let mut s = Session::new("203.0.113.7".parse().unwrap());
        say(
            &mut s,
            &mut pool,
            Side::A,
            &mux(offer("198.51.100.1", 4000)),
            Repeat::Offer,
        );
        let (fa, fb) = (s.ports()[0], s.ports()[1]);
        assert_eq!(
            s.sockets(),
            vec![fa, fa + 1, fb, fb + 1],
            "the answer may refuse"
        );
        say(
            &mut s,
            &mut pool,
            Side::B,
            &mux(offer("198.51.100.2", 5000)),
            Repeat::Maybe,
        );
        assert_eq!(s.sockets(), vec![fa, fb]);
        // A re-offer without it, answered without it: RTCP apart again.
        say(
            &mut s,
            &mut pool,
            Side::A,
            &offer("198.51.100.1", 4000),
            Repeat::Offer,
        );
        assert_eq!(s.sockets().len(), 4);
        assert!(s.withdraw(&mut pool, Side::A), "refused: multiplexed still");
        assert_eq!(s.sockets(), vec![fa, fb]);
        // Muxed RTCP goes from RTP port to RTP port.
        let rr = [0x80u8, 201, 0, 1, 0, 0, 0, 1];
        let (a, b) = (sock("198.51.100.1:4000"), sock("198.51.100.2:5000"));
        let mut p = rtp(0, 1, 160);
        s.forward(now(), fa, a, &mut p).unwrap();
        let mut p = rr.to_vec();
        assert_eq!(
            s.forward(now(), fa, a, &mut p).unwrap(),
            Route {
                from_port: fb,
                to: b
            }
        );
        // Not multiplexed by the answerer: both apart.
        let mut s = Session::new("203.0.113.7".parse().unwrap());
        say(
            &mut s,
            &mut pool,
            Side::A,
            &mux(offer("198.51.100.1", 4000)),
            Repeat::Offer,
        );
        say(
            &mut s,
            &mut pool,
            Side::B,
            &offer("198.51.100.2", 5000),
            Repeat::Maybe,
        );
        assert_eq!(s.sockets().len(), 4);
        // B offers it later: nothing agreed until A's answer says so.
        let b_mux = mux(offer("198.51.100.2", 5000));
        say(&mut s, &mut pool, Side::B, &b_mux, Repeat::Offer);
        assert_eq!(s.sockets().len(), 4, "A still sends RTCP apart");
        assert!(s.withdraw(&mut pool, Side::B));
        assert_eq!(s.sockets().len(), 4);
        say(&mut s, &mut pool, Side::B, &b_mux, Repeat::Offer);
        let a_mux = mux(offer("198.51.100.1", 4000));
        say(&mut s, &mut pool, Side::A, &a_mux, Repeat::Maybe);
        assert_eq!(s.sockets().len(), 2);
    }

    #[test]
    fn rtcp_goes_where_the_partys_rtcp_comes_from_else_where_its_sdp_says() {
        let mut pool = PortPool::new(30000, 30099).unwrap();
        let mut s = Session::new("203.0.113.7".parse().unwrap());
        say(
            &mut s,
            &mut pool,
            Side::A,
            &offer("198.51.100.1", 4000),
            Repeat::Offer,
        );
        // B: public, RTCP on a port of its own (a=rtcp).
        let b_sdp = format!("{}a=rtcp:5009\r\n", offer("198.51.100.2", 5000));
        say(&mut s, &mut pool, Side::B, &b_sdp, Repeat::Maybe);
        let (fa, fb) = (s.ports()[0], s.ports()[1]);
        let a = sock("198.51.100.1:4000");
        let rr = |ssrc: u8| vec![0x80u8, 201, 0, 1, 0, 0, 0, ssrc];
        let mut p = rtp(0, 1, 160);
        s.forward(now(), fa, a, &mut p).unwrap();
        let mut p = rr(1);
        assert_eq!(
            s.forward(now(), fa + 1, sock("198.51.100.1:4001"), &mut p)
                .unwrap(),
            Route {
                from_port: fb + 1,
                to: sock("198.51.100.2:5009")
            },
            "B not heard yet: its a=rtcp port"
        );
        // B heard where its SDP said (no NAT): its a=rtcp port still.
        let mut s2 = Session::new("203.0.113.7".parse().unwrap());
        say(
            &mut s2,
            &mut pool,
            Side::A,
            &offer("198.51.100.1", 4000),
            Repeat::Offer,
        );
        say(&mut s2, &mut pool, Side::B, &b_sdp, Repeat::Maybe);
        let (fa2, fb2) = (s2.ports()[0], s2.ports()[1]);
        for (port, from) in [(fa2, a), (fb2, sock("198.51.100.2:5000"))] {
            let mut p = rtp(0, 1, 160);
            s2.forward(now(), port, from, &mut p).unwrap();
        }
        let mut p = rr(1);
        assert_eq!(
            s2.forward(now(), fa2 + 1, sock("198.51.100.1:4001"), &mut p)
                .unwrap()
                .to,
            sock("198.51.100.2:5009")
        );
        // B is heard, RTP and RTCP from the ports its NAT chose.
        let (b_rtp, b_rtcp) = (sock("198.51.100.2:61000"), sock("198.51.100.2:61234"));
        let mut p = rtp(0, 1, 160);
        s.forward(now(), fb, b_rtp, &mut p).unwrap();
        let mut p = rr(1);
        assert_eq!(
            s.forward(now(), fa + 1, sock("198.51.100.1:4001"), &mut p)
                .unwrap()
                .to,
            sock("198.51.100.2:61001"),
            "RTP heard, RTCP not: its RTP port + 1"
        );
        let mut p = rr(2);
        assert_eq!(
            s.forward(now(), fb + 1, b_rtcp, &mut p).unwrap().to,
            sock("198.51.100.1:4001")
        );
        let mut p = rr(1);
        assert_eq!(
            s.forward(now(), fa + 1, sock("198.51.100.1:4001"), &mut p)
                .unwrap()
                .to,
            b_rtcp,
            "symmetric RTCP"
        );
        // Another source on B's host: dropped.
        let mut p = rr(2);
        assert_eq!(
            s.forward(now(), fb + 1, sock("198.51.100.2:61235"), &mut p),
            Err(Refused::Source)
        );
    }
}
