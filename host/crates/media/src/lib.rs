//! Weir's media core, sans-IO like the SIP core (no sockets, no clock reads):
//! what a relayed call needs besides moving packets.
//!
//! - [`ports`]: RTP/RTCP port pairs from `[media] port_range`, handed out and
//!   always given back.
//! - [`sdp`]: an offer or answer rewritten so both parties send their media
//!   to the relay (connection address, media ports, `a=rtcp`), everything
//!   else (codecs, `telephone-event`, `a=crypto`…) left as it was; and what the
//!   description said (addresses, ports, private addresses, SRTP) for the
//!   relay to expect.
//!
//! - [`rtp`]: RTP and RTCP told apart and checked (RFC 3550, RFC 5761), so
//!   malformed packets are dropped and counted, never forwarded.
//! - [`crypto`]: SDES `a=crypto` keys (RFC 4568) read and generated.
//! - [`srtp`]: SRTP and SRTCP (RFC 3711) where the relay terminates SRTP.
//! - [`stats`]: per-stream packets, bytes, loss and jitter (RFC 3550 A.1, A.8).
//! - [`latch`]: symmetric RTP latching, then strict source (no injection).
//! - [`relay`]: one call's ports, SDP for both parties, and where each packet
//!   goes.
//!
//! Binding sessions to dialogs is the proxy core's (`weir_sip::proxy`), the
//! sockets are the `weir` binary's.

pub mod crypto;
pub mod latch;
pub mod ports;
pub mod relay;
pub mod rtp;
pub mod sdp;
pub mod srtp;
pub mod stats;
