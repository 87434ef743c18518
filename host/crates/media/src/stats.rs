//! What one direction of a relayed stream carried: packets, bytes, loss and
//! interarrival jitter, computed as an RTP receiver would (RFC 3550 A.1,
//! A.3, A.8), from the headers only.
//!
//! The relay sees each packet once on its way through, so these are the
//! numbers of the path from the sender to the relay: loss upstream of the
//! relay, jitter of the sender's network. A new SSRC (a restarted sender,
//! a transfer, a media server taking over) starts a new count; what the old
//! one lost is kept in the total.

use std::time::Duration;

/// Sequence-number jumps larger than this are a restart, not loss (RFC 3550
/// A.1's MAX_DROPOUT), once a second packet confirms them.
const MAX_DROPOUT: u16 = 3000;
/// Packets up to this far behind are late, not a restart (MAX_MISORDER).
const MAX_MISORDER: u16 = 100;

/// The RTP header fields the numbers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

/// One SSRC's sequence and timing state (RFC 3550 A.1's `source`).
#[derive(Debug, Clone)]
struct Source {
    ssrc: u32,
    base_seq: u16,
    max_seq: u16,
    /// Wraps of the sequence number, times 2^16.
    cycles: u64,
    /// A large jump waits for its next packet here before it is believed.
    bad_seq: Option<u16>,
    received: u64,
    /// The last payload type timed, its clock rate and relative transit time
    /// (A.8), in that clock's units.
    timed: Option<(u8, u32, u32)>,
    /// Interarrival jitter in timestamp units (A.8's J, unscaled).
    jitter: f64,
}

impl Source {
    fn new(ssrc: u32, seq: u16) -> Source {
        Source {
            ssrc,
            base_seq: seq,
            max_seq: seq,
            cycles: 0,
            bad_seq: None,
            received: 1,
            timed: None,
            jitter: 0.0,
        }
    }

    fn expected(&self) -> u64 {
        (self.cycles + u64::from(self.max_seq) + 1).saturating_sub(u64::from(self.base_seq))
    }

    fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    /// RFC 3550 A.1 `update_seq`, without probation (the relay already
    /// checked where the packet came from).
    fn update_seq(&mut self, seq: u16) -> Seq {
        let delta = seq.wrapping_sub(self.max_seq);
        if delta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles += 1 << 16;
            }
            self.max_seq = seq;
        } else if delta <= u16::MAX - MAX_MISORDER {
            // A very large jump: the sender restarted, if the next packet
            // follows on from this one.
            if self.bad_seq != Some(seq) {
                self.bad_seq = Some(seq.wrapping_add(1));
                return Seq::Held;
            }
            return Seq::Restart;
        }
        // else: a duplicate or a late packet; counted, max_seq stays.
        self.received += 1;
        Seq::Counted
    }
}

/// What a sequence number did to its source's count.
enum Seq {
    Counted,
    /// A suspected restart, not counted until the next packet confirms it.
    Held,
    /// Confirmed: the source starts a new count at this packet.
    Restart,
}

/// A snapshot of one direction of one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Report {
    /// Every packet relayed this way, RTP and RTCP.
    pub packets: u64,
    pub bytes: u64,
    pub rtcp_packets: u64,
    /// RFC 4733 event packets (DTMF).
    pub dtmf_packets: u64,
    /// The SSRC heard last.
    pub ssrc: Option<u32>,
    /// Times the SSRC changed.
    pub ssrc_changes: u64,
    /// RTP packets the sequence numbers say were sent (over every SSRC).
    pub expected: u64,
    /// Of those, not received (never below zero: duplicates do not count).
    pub lost: u64,
    /// Interarrival jitter of the current SSRC, in milliseconds.
    pub jitter_ms: f64,
    /// Packets whose payload type the relay renumbered for the receiver.
    pub payload_types_mapped: u64,
}

/// The receiving statistics of one direction.
#[derive(Debug, Clone, Default)]
pub struct Reception {
    packets: u64,
    bytes: u64,
    rtcp_packets: u64,
    dtmf_packets: u64,
    payload_types_mapped: u64,
    source: Option<Source>,
    ssrc_changes: u64,
    /// Expected and lost over the SSRCs heard before the current one.
    expected_before: u64,
    lost_before: u64,
}

impl Reception {
    /// An RTCP packet relayed.
    pub fn rtcp(&mut self, len: usize) {
        self.packets += 1;
        self.rtcp_packets += 1;
        self.bytes += len as u64;
    }

    /// A packet whose payload type was renumbered.
    pub fn mapped(&mut self) {
        self.payload_types_mapped += 1;
    }

    /// An RTP packet relayed: `at` is its arrival on any clock that only
    /// moves forward; `clock_rate` its payload type's (0: unknown, and no
    /// jitter is computed from it), `dtmf` whether it is an RFC 4733 event
    /// (whose timestamps stand still for the event, so never timed).
    pub fn rtp(&mut self, at: Duration, h: Header, len: usize, clock_rate: u32, dtmf: bool) {
        self.packets += 1;
        self.bytes += len as u64;
        if dtmf {
            self.dtmf_packets += 1;
        }
        let restart = match &mut self.source {
            Some(s) if s.ssrc == h.ssrc => match s.update_seq(h.sequence) {
                Seq::Counted => false,
                Seq::Held => return,
                Seq::Restart => true,
            },
            Some(_) => {
                self.ssrc_changes += 1;
                true
            }
            None => true,
        };
        if restart {
            if let Some(old) = self.source.take() {
                self.expected_before += old.expected();
                self.lost_before += old.lost();
            }
        }
        let source = self
            .source
            .get_or_insert_with(|| Source::new(h.ssrc, h.sequence));
        if dtmf || clock_rate == 0 {
            return;
        }
        // A.8: transit = arrival - timestamp in the media clock's units;
        // J += (|D| - J) / 16 with D the change in transit. Wrapping u32
        // arithmetic, as the RFC's code, so a timestamp wrap is no jump.
        let arrival = (at.as_nanos() * u128::from(clock_rate) / 1_000_000_000) as u32;
        let transit = arrival.wrapping_sub(h.timestamp);
        match source.timed {
            Some((pt, rate, last)) if pt == h.payload_type && rate == clock_rate => {
                let d = f64::from((transit.wrapping_sub(last) as i32).unsigned_abs());
                source.jitter += (d - source.jitter) / 16.0;
            }
            // A new codec (another clock) starts timing afresh.
            _ => {}
        }
        source.timed = Some((h.payload_type, clock_rate, transit));
    }

    pub fn report(&self) -> Report {
        let (expected, lost, ssrc, jitter_ms) = match &self.source {
            Some(s) => {
                let rate = s.timed.map_or(0, |(_, r, _)| r);
                let jitter_ms = if rate == 0 {
                    0.0
                } else {
                    s.jitter * 1000.0 / f64::from(rate)
                };
                (s.expected(), s.lost(), Some(s.ssrc), jitter_ms)
            }
            None => (0, 0, None, 0.0),
        };
        Report {
            packets: self.packets,
            bytes: self.bytes,
            rtcp_packets: self.rtcp_packets,
            dtmf_packets: self.dtmf_packets,
            ssrc,
            ssrc_changes: self.ssrc_changes,
            expected: self.expected_before + expected,
            lost: self.lost_before + lost,
            jitter_ms,
            payload_types_mapped: self.payload_types_mapped,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PT: u8 = 0;

    fn h(seq: u16, ts: u32) -> Header {
        Header {
            payload_type: PT,
            sequence: seq,
            timestamp: ts,
            ssrc: 7,
        }
    }

    /// `n` packets from `seq`, 20 ms of 8 kHz audio apart, arriving on time
    /// (plus `wobble(i)` ms).
    fn send(r: &mut Reception, seqs: impl Iterator<Item = u16>, wobble: impl Fn(u64) -> u64) {
        for (i, seq) in seqs.enumerate() {
            let i = i as u64;
            let at = Duration::from_millis(20 * i + wobble(i));
            r.rtp(at, h(seq, (i as u32) * 160), 172, 8000, false);
        }
    }

    #[test]
    fn a_clean_stream_has_no_loss_and_no_jitter() {
        let mut r = Reception::default();
        send(&mut r, 0..250, |_| 0);
        let rep = r.report();
        assert_eq!(
            (rep.packets, rep.bytes, rep.expected, rep.lost),
            (250, 250 * 172, 250, 0)
        );
        assert!(rep.jitter_ms < 1e-9, "{rep:?}");
        assert_eq!(rep.ssrc, Some(7));
    }

    #[test]
    fn gaps_are_loss_across_a_sequence_wrap_and_late_or_duplicate_packets_are_not() {
        let mut r = Reception::default();
        // 65,500 … 65,535, 0 … 99 without every tenth packet.
        let seqs = (65_500u32..65_636)
            .filter(|s| s % 10 != 3)
            .map(|s| s as u16);
        send(&mut r, seqs, |_| 0);
        let rep = r.report();
        assert_eq!(rep.expected, 136);
        assert_eq!(rep.lost, 136 - 122);
        // A duplicate and a late packet: received, the highest stays.
        r.rtp(Duration::from_secs(10), h(99, 0), 172, 8000, false);
        r.rtp(Duration::from_secs(10), h(23, 0), 172, 8000, false);
        let rep = r.report();
        assert_eq!((rep.expected, rep.lost), (136, 12));
    }

    #[test]
    fn jitter_follows_rfc_3550_a8() {
        // Every other packet 10 ms late: |D| = 80 units each time after the
        // first, so J converges on 80 units = 10 ms at 8 kHz.
        let mut r = Reception::default();
        send(&mut r, 0..400, |i| if i % 2 == 1 { 10 } else { 0 });
        let j = r.report().jitter_ms;
        assert!((j - 10.0).abs() < 0.01, "{j}");
        // The first steps by hand: J1 = 80/16 = 5 units = 0.625 ms.
        let mut r = Reception::default();
        send(&mut r, 0..2, |i| 10 * i);
        assert!((r.report().jitter_ms - 0.625).abs() < 1e-9);
    }

    #[test]
    fn dtmf_is_counted_but_not_timed_and_unknown_clocks_are_not_timed() {
        let mut r = Reception::default();
        send(&mut r, 0..10, |_| 0);
        // Events: one timestamp for the whole event, arriving 20 ms apart.
        for i in 10..20u16 {
            let at = Duration::from_millis(200 + 20 * u64::from(i));
            let mut e = h(i, 1600);
            e.payload_type = 101;
            r.rtp(at, e, 16, 8000, true);
        }
        let rep = r.report();
        assert_eq!((rep.dtmf_packets, rep.lost, rep.packets), (10, 0, 20));
        assert!(rep.jitter_ms < 1e-9, "events never move the jitter");
        let mut r = Reception::default();
        for i in 0..10u16 {
            r.rtp(
                Duration::from_millis(u64::from(i) * 37),
                h(i, 0),
                100,
                0,
                false,
            );
        }
        assert_eq!(r.report().jitter_ms, 0.0);
    }

    #[test]
    fn a_new_ssrc_starts_afresh_and_keeps_what_the_old_one_lost() {
        let mut r = Reception::default();
        send(&mut r, (0..100).filter(|s| *s != 50), |_| 0);
        for i in 0..50u16 {
            let mut p = h(40_000 + i, 0);
            p.ssrc = 9;
            r.rtp(
                Duration::from_secs(5) + Duration::from_millis(20 * u64::from(i)),
                p,
                172,
                8000,
                false,
            );
        }
        let rep = r.report();
        assert_eq!(
            (
                rep.ssrc,
                rep.ssrc_changes,
                rep.expected,
                rep.lost,
                rep.packets
            ),
            (Some(9), 1, 150, 1, 149)
        );
    }

    #[test]
    fn a_sequence_restart_is_believed_on_its_second_packet() {
        let mut r = Reception::default();
        send(&mut r, 0..10, |_| 0);
        // A stray far-off number alone is not loss of 20,000 packets…
        r.rtp(Duration::from_secs(1), h(20_000, 0), 172, 8000, false);
        assert_eq!(r.report().lost, 0);
        // …but two in a row are a restart, counted from the second.
        r.rtp(Duration::from_secs(1), h(30_000, 0), 172, 8000, false);
        r.rtp(Duration::from_secs(1), h(30_001, 0), 172, 8000, false);
        r.rtp(Duration::from_secs(1), h(30_002, 0), 172, 8000, false);
        let rep = r.report();
        assert_eq!((rep.expected, rep.lost), (12, 0), "the old count is kept");
    }
}
