//! Which source a relayed stream accepts packets from (symmetric RTP, RFC
//! 4961): the relay latches onto the address the first good packet comes
//! from, because behind NAT that — not the address in the SDP — is where the
//! party really is; after that only that address is accepted ("strict
//! source"), so nobody else can inject audio or make the relay send a call's
//! media to them (the "RTP bleed" attack). To shrink the race for the first
//! packet, a party whose SDP names a public address is latched only from that
//! address's host (its port may differ behind a NAT); only a private SDP
//! address, which says nothing about where packets will come from, lets the
//! first source anywhere win.
//!
//! ```text
//!              good packet from S            packet from S
//!   Waiting ──────────────────────▶ Latched(S) ◀────────────┐
//!                                       │ └─────────────────┘
//!                                       │ packet from T ≠ S: dropped, counted
//! ```
//!
//! A re-INVITE that moves the party's media ([`Latch::relatch`]) opens the
//! latch again for the next packet.

use std::net::SocketAddr;

/// The source policy of one direction of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latch {
    /// The host the SDP named, when it is public: only it (or the host the
    /// party's signalling came from) may latch.
    expected: Option<std::net::IpAddr>,
    signalled_from: Option<std::net::IpAddr>,
    source: Option<SocketAddr>,
    /// Where the party's RTCP (on the relay's RTCP port) comes from: only
    /// from the host its RTP latched onto, and the first such source is
    /// where its RTCP goes (symmetric RTCP, RFC 4961: behind a NAT, not
    /// its RTP port + 1).
    rtcp_source: Option<SocketAddr>,
    /// Packets refused because they came from elsewhere.
    pub dropped: u64,
}

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The first packet: the stream is now latched to this source.
    Latched,
    Accept,
    /// From another source than the latched one.
    Drop,
}

impl Latch {
    /// `sdp_address`: the address the party's SDP named (see the module doc).
    pub fn new(sdp_address: std::net::IpAddr) -> Latch {
        Latch {
            expected: (!crate::sdp::is_private(sdp_address)).then_some(sdp_address),
            ..Latch::default()
        }
    }

    /// Like [`Latch::new`], also letting the host the party's SIP came from
    /// latch (a phone whose SDP names one interface and whose packets leave
    /// from another, as SIP did).
    pub fn with_signalling(sdp_address: std::net::IpAddr, from: Option<std::net::IpAddr>) -> Latch {
        Latch {
            signalled_from: from,
            ..Latch::new(sdp_address)
        }
    }

    /// The source latched onto, if any.
    pub fn source(&self) -> Option<SocketAddr> {
        self.source
    }

    /// The source the party's RTCP latched onto, if any.
    pub fn rtcp_source(&self) -> Option<SocketAddr> {
        self.rtcp_source
    }

    /// Judges a well-formed RTCP packet from `from` on the RTCP port.
    pub fn check_rtcp(&mut self, from: SocketAddr) -> Verdict {
        match (self.source, self.rtcp_source) {
            (Some(rtp), None) if rtp.ip() == from.ip() => {
                self.rtcp_source = Some(from);
                Verdict::Latched
            }
            (Some(_), Some(s)) if s == from => Verdict::Accept,
            _ => {
                self.dropped += 1;
                Verdict::Drop
            }
        }
    }

    /// Judges a well-formed packet from `from`.
    pub fn check(&mut self, from: SocketAddr) -> Verdict {
        match self.source {
            None if self.expected.is_some_and(|ip| ip != from.ip())
                && self.signalled_from != Some(from.ip()) =>
            {
                self.dropped += 1;
                Verdict::Drop
            }
            None => {
                self.source = Some(from);
                Verdict::Latched
            }
            Some(s) if s == from => Verdict::Accept,
            Some(_) => {
                self.dropped += 1;
                Verdict::Drop
            }
        }
    }

    /// The party's media moved (a re-INVITE or UPDATE with new addresses):
    /// the next good packet latches again.
    pub fn relatch(&mut self) {
        self.source = None;
        self.rtcp_source = None;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn after_latching_ten_thousand_injected_packets_are_all_dropped() {
        let carrier: SocketAddr = "198.51.100.20:40000".parse().unwrap();
        let attacker: SocketAddr = "203.0.113.66:40000".parse().unwrap();
        let mut l = Latch::new(carrier.ip());
        // The SDP named the carrier's public host: nobody else may latch first.
        assert_eq!(l.check(attacker), Verdict::Drop);
        assert_eq!(l.check(carrier), Verdict::Latched);
        for _ in 0..10_000 {
            assert_eq!(l.check(attacker), Verdict::Drop);
        }
        assert_eq!(l.check(carrier), Verdict::Accept);
        assert_eq!((l.dropped, l.source()), (10_001, Some(carrier)));
        // Same host, another port: another source.
        assert_eq!(
            l.check("198.51.100.20:40002".parse().unwrap()),
            Verdict::Drop
        );
        l.relatch();
        assert_eq!(l.check(attacker), Verdict::Drop);
        assert_eq!(
            l.check("198.51.100.20:41000".parse().unwrap()),
            Verdict::Latched
        );
    }

    #[test]
    fn a_private_sdp_address_latches_to_whoever_sends_first() {
        // The agent behind NAT wrote 10.0.0.5; its packets come from the NAT.
        let nat: SocketAddr = "192.0.2.50:61000".parse().unwrap();
        let mut l = Latch::new("10.0.0.5".parse().unwrap());
        assert_eq!(l.check(nat), Verdict::Latched);
        assert_eq!(l.check("10.0.0.5:49170".parse().unwrap()), Verdict::Drop);
        assert_eq!(l.source(), Some(nat));
    }

    #[test]
    fn the_host_of_the_partys_signalling_may_latch_too() {
        // The SDP names one interface, packets leave from the one SIP did.
        let mut l = Latch::with_signalling(
            "192.0.2.2".parse().unwrap(),
            Some("127.0.0.1".parse().unwrap()),
        );
        assert_eq!(l.check("203.0.113.66:4000".parse().unwrap()), Verdict::Drop);
        assert_eq!(l.check("127.0.0.1:4000".parse().unwrap()), Verdict::Latched);
        assert_eq!(l.check("192.0.2.2:4000".parse().unwrap()), Verdict::Drop);
    }

    #[test]
    fn rtcp_latches_from_the_rtp_host_and_then_only_that_source() {
        let nat_rtp: SocketAddr = "192.0.2.50:61000".parse().unwrap();
        let nat_rtcp: SocketAddr = "192.0.2.50:61234".parse().unwrap();
        let mut l = Latch::new("10.0.0.5".parse().unwrap());
        assert_eq!(l.check_rtcp(nat_rtcp), Verdict::Drop, "no RTP heard yet");
        assert_eq!(l.check(nat_rtp), Verdict::Latched);
        assert_eq!(
            l.check_rtcp("203.0.113.66:61234".parse().unwrap()),
            Verdict::Drop
        );
        assert_eq!(l.check_rtcp(nat_rtcp), Verdict::Latched);
        assert_eq!(l.check_rtcp(nat_rtcp), Verdict::Accept);
        assert_eq!(
            l.check_rtcp("192.0.2.50:61001".parse().unwrap()),
            Verdict::Drop
        );
        assert_eq!(l.rtcp_source(), Some(nat_rtcp));
        l.relatch();
        assert_eq!(l.rtcp_source(), None);
    }
}
