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
//! Forwarding (latching, strict source), SRTP contexts and the relay session
//! tied to a dialog come next (issue: media relay).

pub mod ports;
pub mod sdp;
