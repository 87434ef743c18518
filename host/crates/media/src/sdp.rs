//! SDP for a relayed call (RFC 8866 syntax, RFC 3264 offer/answer): what a
//! description asks for, and the description rewritten so the party it goes
//! to sends its media to the relay.
//!
//! The rewrite touches only the connection addresses (`c=`), the ports of
//! active media lines (`m=`) and `a=rtcp` (RFC 3605); codecs, `telephone-event`
//! (RFC 4733), `a=crypto` (RFC 4568), directions and everything unknown pass
//! as they were. A disabled stream (port 0) stays disabled.

use std::net::IpAddr;

use sdp_types::{Attribute, Connection, Session};

/// Why a description cannot be relayed (answered 488 with the reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("malformed SDP: {0}")]
    Malformed(String),
    #[error("media line {0} has no connection address (c=)")]
    NoConnection(usize),
    #[error("connection address {0:?} is not an IP address")]
    NotAnAddress(String),
    #[error("{needed} relay ports needed, {given} given")]
    Ports { needed: usize, given: usize },
}

/// One media line as the description states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaLine {
    /// `audio`, `video`…
    pub kind: String,
    /// The address to send to (the line's `c=`, else the session's).
    pub address: IpAddr,
    /// 0: the stream is disabled.
    pub port: u16,
    /// `a=rtcp` when given; otherwise RTCP is on `port + 1` (or muxed).
    pub rtcp_port: Option<u16>,
    /// `a=rtcp-mux` (RFC 5761): RTCP shares the RTP port.
    pub rtcp_mux: bool,
    /// SRTP offered: an `RTP/SAVP`-family profile or `a=crypto` lines.
    pub srtp: bool,
    /// The `telephone-event` payload type, if any (RFC 4733 DTMF).
    pub telephone_event: Option<u8>,
    /// The payload types of the `m=` line, in order, with what each means
    /// (`a=rtpmap`, or RFC 3551's table for static types).
    pub formats: Vec<Format>,
    /// The `a=crypto` values (RFC 4568), in order.
    pub crypto: Vec<String>,
    /// `a=sendonly`, `a=recvonly` or `a=inactive` (here or for the whole
    /// session): a call on hold, where silence is expected.
    pub held: bool,
}

/// One payload type of a media line: `a=rtpmap:<pt> <encoding>/<rate>[/<channels>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub payload_type: u8,
    /// Lower case (`pcmu`, `telephone-event`); empty when not known (a
    /// dynamic type without `a=rtpmap`).
    pub encoding: String,
    /// RTP clock rate in Hz; 0 when not known.
    pub clock_rate: u32,
    pub channels: u8,
}

impl Format {
    /// The same codec as `other`, whatever number each side gave it.
    pub fn same_codec(&self, other: &Format) -> bool {
        !self.encoding.is_empty()
            && self.encoding == other.encoding
            && self.clock_rate == other.clock_rate
            && self.channels == other.channels
    }

    /// RFC 4733 events (DTMF).
    pub fn is_telephone_event(&self) -> bool {
        self.encoding == "telephone-event"
    }
}

/// RFC 3551 §6's static audio payload types: (encoding, clock rate).
fn static_format(pt: u8) -> Option<(&'static str, u32)> {
    Some(match pt {
        0 => ("pcmu", 8000),
        3 => ("gsm", 8000),
        4 => ("g723", 8000),
        5 => ("dvi4", 8000),
        6 => ("dvi4", 16000),
        7 => ("lpc", 8000),
        8 => ("pcma", 8000),
        9 => ("g722", 8000),
        10 | 11 => ("l16", 44100),
        12 => ("qcelp", 8000),
        13 => ("cn", 8000),
        15 => ("g728", 8000),
        18 => ("g729", 8000),
        _ => return None,
    })
}

/// The formats of an `m=` line: its payload-type list read with its
/// `a=rtpmap` lines. Non-numeric formats (not RTP) give none.
fn formats(fmt: &str, attrs: &[Attribute]) -> Vec<Format> {
    let maps: Vec<(u8, &str)> = attribute(attrs, "rtpmap")
        .flatten()
        .filter_map(|v| {
            let (pt, codec) = v.trim().split_once(' ')?;
            Some((pt.trim().parse().ok()?, codec.trim()))
        })
        .collect();
    fmt.split_whitespace()
        .filter_map(|f| f.parse::<u8>().ok().filter(|pt| *pt < 128))
        .map(|pt| {
            if let Some((_, codec)) = maps.iter().find(|(p, _)| *p == pt) {
                let mut parts = codec.split('/');
                let encoding = parts.next().unwrap_or_default().to_ascii_lowercase();
                let clock_rate = parts.next().and_then(|r| r.parse().ok()).unwrap_or(0);
                let channels = parts.next().and_then(|c| c.parse().ok()).unwrap_or(1);
                Format {
                    payload_type: pt,
                    encoding,
                    clock_rate,
                    channels,
                }
            } else {
                let (encoding, clock_rate) = static_format(pt).unwrap_or(("", 0));
                Format {
                    payload_type: pt,
                    encoding: encoding.to_string(),
                    clock_rate,
                    channels: 1,
                }
            }
        })
        .collect()
}

/// What a description says, for the relay to expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    pub media: Vec<MediaLine>,
    /// Addresses that cannot be reached from the public side: RFC 1918,
    /// RFC 6598 (carrier-grade NAT) and IPv6 unique-local (fc00::/7).
    pub private: Vec<IpAddr>,
}

impl Description {
    /// Media lines that carry media (port not 0).
    pub fn active(&self) -> usize {
        self.media.iter().filter(|m| m.port != 0).count()
    }
}

/// True for an address a party elsewhere cannot send to.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private() || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

fn parse(sdp: &[u8]) -> Result<Session, SdpError> {
    Session::parse(sdp).map_err(|e| SdpError::Malformed(e.to_string()))
}

fn address(c: &Connection) -> Result<IpAddr, SdpError> {
    // Multicast forms carry `/ttl[/count]`; a relay only does unicast, but
    // the address is still read so the caller can refuse it precisely.
    let text = c.connection_address.split('/').next().unwrap_or_default();
    text.parse()
        .map_err(|_| SdpError::NotAnAddress(c.connection_address.clone()))
}

fn attribute<'a>(attrs: &'a [Attribute], name: &str) -> impl Iterator<Item = Option<&'a str>> + 'a {
    let name = name.to_string();
    attrs
        .iter()
        .filter(move |a| a.attribute.eq_ignore_ascii_case(&name))
        .map(|a| a.value.as_deref())
}

/// The direction attribute among `attrs`, if any.
fn direction(attrs: &[Attribute]) -> Option<&'static str> {
    attrs.iter().find_map(|a| {
        ["sendrecv", "sendonly", "recvonly", "inactive"]
            .into_iter()
            .find(|d| a.attribute.eq_ignore_ascii_case(d))
    })
}

/// Reads a description.
pub fn inspect(sdp: &[u8]) -> Result<Description, SdpError> {
    let s = parse(sdp)?;
    let session_addr = s.connection.as_ref().map(address).transpose()?;
    let mut media = Vec::new();
    let mut private = Vec::new();
    if let Some(a) = session_addr.filter(|a| is_private(*a)) {
        private.push(a);
    }
    for (i, m) in s.medias.iter().enumerate() {
        let own = m.connections.first().map(address).transpose()?;
        let Some(address) = own.or(session_addr) else {
            return Err(SdpError::NoConnection(i + 1));
        };
        if own.is_some() && is_private(address) && !private.contains(&address) {
            private.push(address);
        }
        let rtcp_port = attribute(&m.attributes, "rtcp")
            .flatten()
            .next()
            .and_then(|v| v.split_whitespace().next())
            .and_then(|p| p.parse().ok());
        let formats = formats(&m.fmt, &m.attributes);
        let telephone_event = formats
            .iter()
            .find(|f| f.is_telephone_event())
            .map(|f| f.payload_type);
        media.push(MediaLine {
            kind: m.media.clone(),
            address,
            port: m.port,
            rtcp_port,
            rtcp_mux: attribute(&m.attributes, "rtcp-mux").next().is_some(),
            srtp: m.proto.to_ascii_uppercase().contains("SAVP")
                || attribute(&m.attributes, "crypto").next().is_some(),
            telephone_event,
            formats,
            crypto: attribute(&m.attributes, "crypto")
                .flatten()
                .map(str::to_string)
                .collect(),
            held: direction(&m.attributes)
                .or_else(|| direction(&s.attributes))
                .is_some_and(|d| d != "sendrecv"),
        });
    }
    Ok(Description { media, private })
}

/// What happens to an active media line's SDES keys on their way through a
/// relay that terminates SRTP on one leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CryptoEdit {
    /// Untouched (RTP, or SRTP passed through end to end).
    Keep,
    /// Towards the plain leg: `a=crypto` removed, `RTP/SAVP` becomes `RTP/AVP`.
    Strip,
    /// Towards the SRTP leg: this one `a=crypto` value instead of any, and
    /// `RTP/AVP` becomes `RTP/SAVP`.
    Set(String),
}

/// The description with every active media line pointed at `relay`, the
/// n-th active line on `ports[n]` (RTCP on the next port unless muxed).
pub fn rewrite(sdp: &[u8], relay: IpAddr, ports: &[u16]) -> Result<Vec<u8>, SdpError> {
    rewrite_with(sdp, relay, ports, &[])
}

/// Like [`rewrite`], with the n-th active line's keys edited by `crypto[n]`
/// (missing entries: [`CryptoEdit::Keep`]).
pub fn rewrite_with(
    sdp: &[u8],
    relay: IpAddr,
    ports: &[u16],
    crypto: &[CryptoEdit],
) -> Result<Vec<u8>, SdpError> {
    let mut s = parse(sdp)?;
    let needed = s.medias.iter().filter(|m| m.port != 0).count();
    if ports.len() < needed {
        return Err(SdpError::Ports {
            needed,
            given: ports.len(),
        });
    }
    let addrtype = if relay.is_ipv4() { "IP4" } else { "IP6" };
    let relay_connection = Connection {
        nettype: "IN".into(),
        addrtype: addrtype.into(),
        connection_address: relay.to_string(),
    };
    let had_session_connection = s.connection.is_some();
    if had_session_connection {
        s.connection = Some(relay_connection.clone());
    }
    let mut next = ports.iter();
    for (i, m) in s.medias.iter_mut().enumerate() {
        if m.port == 0 {
            continue;
        }
        if m.connections.is_empty() && !had_session_connection {
            return Err(SdpError::NoConnection(i + 1));
        }
        let Some(&port) = next.next() else {
            break;
        };
        let nth = ports.len() - next.len() - 1;
        match crypto.get(nth).unwrap_or(&CryptoEdit::Keep) {
            CryptoEdit::Keep => {}
            CryptoEdit::Strip => {
                m.attributes
                    .retain(|a| !a.attribute.eq_ignore_ascii_case("crypto"));
                m.proto = m.proto.replace("SAVP", "AVP");
            }
            CryptoEdit::Set(value) => {
                let at = m
                    .attributes
                    .iter()
                    .position(|a| a.attribute.eq_ignore_ascii_case("crypto"))
                    .unwrap_or(m.attributes.len());
                m.attributes
                    .retain(|a| !a.attribute.eq_ignore_ascii_case("crypto"));
                let at = at.min(m.attributes.len());
                m.attributes.insert(
                    at,
                    sdp_types::Attribute {
                        attribute: "crypto".into(),
                        value: Some(value.clone()),
                    },
                );
                if !m.proto.contains("SAVP") {
                    m.proto = m.proto.replace("AVP", "SAVP");
                }
            }
        }
        m.port = port;
        for c in &mut m.connections {
            *c = relay_connection.clone();
        }
        let mux = m
            .attributes
            .iter()
            .any(|a| a.attribute.eq_ignore_ascii_case("rtcp-mux"));
        for a in &mut m.attributes {
            if a.attribute.eq_ignore_ascii_case("rtcp") {
                let rtcp = if mux { port } else { port.saturating_add(1) };
                a.value = Some(format!("{rtcp} IN {addrtype} {relay}"));
            }
        }
    }
    let mut out = Vec::new();
    s.write(&mut out)
        .map_err(|e| SdpError::Malformed(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const AGENT_OFFER: &str = "v=0\r\n\
o=agent 2890844526 2890844527 IN IP4 10.0.0.5\r\n\
s=call\r\n\
c=IN IP4 10.0.0.5\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=rtcp:49171\r\n\
a=x-unknown:kept as is\r\n\
a=sendrecv\r\n\
m=video 0 RTP/AVP 96\r\n\
a=rtpmap:96 VP8/90000\r\n";

    #[test]
    fn an_offer_is_read_with_its_private_address_and_dtmf() {
        let d = inspect(AGENT_OFFER.as_bytes()).unwrap();
        assert_eq!(d.private, vec!["10.0.0.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(d.active(), 1);
        let audio = &d.media[0];
        assert_eq!(
            (
                audio.port,
                audio.rtcp_port,
                audio.telephone_event,
                audio.srtp,
                audio.rtcp_mux
            ),
            (49170, Some(49171), Some(101), false, false)
        );
        assert_eq!(d.media[1].port, 0);
        let f = |pt, e: &str, rate| Format {
            payload_type: pt,
            encoding: e.into(),
            clock_rate: rate,
            channels: 1,
        };
        assert_eq!(
            audio.formats,
            vec![
                f(0, "pcmu", 8000),
                f(8, "pcma", 8000),
                f(101, "telephone-event", 8000)
            ]
        );
        assert_eq!(d.media[1].formats, vec![f(96, "vp8", 90000)]);
        // Static types need no rtpmap; an unmapped dynamic one is unknown.
        let bare = AGENT_OFFER
            .replace("a=rtpmap:0 PCMU/8000\r\n", "")
            .replace("a=rtpmap:101 telephone-event/8000\r\n", "");
        let bare = inspect(bare.as_bytes()).unwrap();
        assert_eq!(bare.media[0].formats[0], f(0, "pcmu", 8000));
        assert_eq!(bare.media[0].formats[2], f(101, "", 0));
        assert!(!bare.media[0].formats[2].same_codec(&f(101, "", 0)));
        assert_eq!(bare.media[0].telephone_event, None);
    }

    #[test]
    fn the_rewrite_moves_addresses_and_ports_and_keeps_everything_else() {
        let relay: IpAddr = "203.0.113.7".parse().unwrap();
        let out = rewrite(AGENT_OFFER.as_bytes(), relay, &[30000]).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        let expected = AGENT_OFFER
            .replace("c=IN IP4 10.0.0.5", "c=IN IP4 203.0.113.7")
            .replace("m=audio 49170", "m=audio 30000")
            .replace("a=rtcp:49171", "a=rtcp:30001 IN IP4 203.0.113.7");
        assert_eq!(text, expected, "only c=, m= ports and a=rtcp change");
        let again = inspect(&out).unwrap();
        assert!(again.private.is_empty());
        assert_eq!(again.media[0].address, relay);
        assert_eq!(again.media[1].port, 0, "a disabled stream stays disabled");
    }

    #[test]
    fn srtp_and_mux_are_seen_and_crypto_passes_untouched() {
        let offer = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n\
m=audio 5004 RTP/SAVP 0\r\nc=IN IP4 192.0.2.1\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4\r\n\
a=rtcp-mux\r\na=rtcp:5004\r\n";
        let d = inspect(offer.as_bytes()).unwrap();
        assert!(d.media[0].srtp && d.media[0].rtcp_mux);
        assert!(d.private.is_empty());
        let out = String::from_utf8(
            rewrite(offer.as_bytes(), "198.51.100.2".parse().unwrap(), &[40000]).unwrap(),
        )
        .unwrap();
        assert!(out.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4\r\n"), "{out}");
        assert!(
            out.contains("a=rtcp:40000 IN IP4 198.51.100.2\r\n"),
            "muxed RTCP stays on the RTP port: {out}"
        );
        assert!(out.contains("c=IN IP4 198.51.100.2\r\n"), "{out}");
    }

    #[test]
    fn bad_descriptions_say_why() {
        assert!(matches!(inspect(b"hello"), Err(SdpError::Malformed(_))));
        let no_c = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n";
        assert_eq!(
            inspect(no_c.as_bytes()).unwrap_err(),
            SdpError::NoConnection(1)
        );
        assert_eq!(
            rewrite(no_c.as_bytes(), "192.0.2.9".parse().unwrap(), &[30000]).unwrap_err(),
            SdpError::NoConnection(1)
        );
        let named = no_c.replace("m=audio", "c=IN IP4 media.example.com\r\nm=audio");
        assert!(matches!(
            inspect(named.as_bytes()),
            Err(SdpError::NotAnAddress(_))
        ));
        assert_eq!(
            rewrite(AGENT_OFFER.as_bytes(), "192.0.2.9".parse().unwrap(), &[]).unwrap_err(),
            SdpError::Ports {
                needed: 1,
                given: 0
            }
        );
    }

    #[test]
    fn private_ranges() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "fd00::1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["100.128.0.1", "8.8.8.8", "192.0.2.1", "2001:db8::1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn keys_are_stripped_towards_the_plain_leg_and_set_towards_the_srtp_leg() {
        let srtp = "v=0\r\no=- 1 1 IN IP4 198.51.100.1\r\ns=-\r\nc=IN IP4 198.51.100.1\r\nt=0 0\r\n\
m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n\
a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\na=sendrecv\r\n";
        let d = inspect(srtp.as_bytes()).unwrap();
        assert_eq!(d.media[0].crypto.len(), 2);
        let relay: IpAddr = "203.0.113.7".parse().unwrap();
        let plain = rewrite_with(srtp.as_bytes(), relay, &[30000], &[CryptoEdit::Strip]).unwrap();
        let plain = String::from_utf8(plain).unwrap();
        assert!(plain.contains("m=audio 30000 RTP/AVP 0\r\n"), "{plain}");
        assert!(!plain.contains("crypto"), "{plain}");
        assert!(plain.contains("a=sendrecv"));
        let back = rewrite_with(
            plain.as_bytes(),
            relay,
            &[30002],
            &[CryptoEdit::Set(
                "1 AES_CM_128_HMAC_SHA1_80 inline:abc".into(),
            )],
        )
        .unwrap();
        let back = String::from_utf8(back).unwrap();
        assert!(back.contains("m=audio 30002 RTP/SAVP 0\r\n"), "{back}");
        assert!(
            back.contains("\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:abc\r\n"),
            "{back}"
        );
        assert_eq!(back.matches("a=crypto").count(), 1);
    }
}
