//! `[media]`: the RTP relay. Present or not, the relay runs when an address
//! to advertise in SDP can be worked out; `mode` says which calls use it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use weir_media::crypto::Suite;
use weir_sip::proxy::MediaPolicy;

use super::Check;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMedia {
    mode: Option<Spanned<String>>,
    port_range: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    advertise: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    hold_timeout: Option<Spanned<String>>,
    max_sessions: Option<Spanned<i64>>,
    workers: Option<Spanned<i64>>,
    srtp_over_plain_sip: Option<bool>,
    srtp_suite: Option<Spanned<String>>,
}

/// `[media]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSettings {
    pub policy: MediaPolicy,
    /// First and last port (RTP on even ports, RTCP on the odd one above).
    pub port_range: (u16, u16),
    /// The address relay sockets bind to.
    pub address: IpAddr,
    /// The address written into relayed SDP.
    pub advertise: IpAddr,
    /// No packet for this long on an answered call ends it (BYE both ways).
    pub timeout: Duration,
    /// The same for a call on hold (sendonly, recvonly, inactive).
    pub hold_timeout: Duration,
    /// Relayed calls at most; more get 503 at once.
    pub max_sessions: usize,
    /// Threads forwarding packets.
    pub workers: usize,
    /// Terminate SRTP where the leg's signalling is not TLS.
    pub srtp_over_plain_sip: bool,
    /// The suite the relay offers a party whose SRTP it terminates (when
    /// that party answers; an SRTP offer is answered in its own suite).
    pub srtp_suite: Suite,
}

/// Checks `[media]`. None: no relay (`mode = "off"`, or no section and no
/// address to advertise, as behind a wildcard listener named by a DNS name).
pub(super) fn media_settings(
    c: &mut Check<'_>,
    raw: Option<&Spanned<RawMedia>>,
    listen: &[(weir_sip::proxy::Transport, SocketAddr)],
    sip_advertise: Option<&str>,
) -> Option<MediaSettings> {
    let empty = RawMedia::default();
    let r = raw.map(Spanned::get_ref).unwrap_or(&empty);
    let policy = c.choice(
        "[media] mode",
        &r.mode,
        &[
            ("off", None),
            ("plugin", Some(MediaPolicy::AsRouted)),
            ("auto", Some(MediaPolicy::Auto)),
            ("always", Some(MediaPolicy::Always)),
        ],
        Some(MediaPolicy::Auto),
    )?;
    let port_range = match &r.port_range {
        None => (30_000, 39_999),
        Some(v) => match parse_range(v.get_ref()) {
            Ok(range) => range,
            Err(m) => {
                c.err("[media] port_range", v, m);
                (30_000, 39_999)
            }
        },
    };
    let ip = |c: &mut Check<'_>, key: &str, v: &Option<Spanned<String>>| {
        let v = v.as_ref()?;
        match v.get_ref().parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                c.err(key, v, format!("\"{}\" is not an IP address", v.get_ref()));
                None
            }
        }
    };
    let first_listener = listen.first().map(|(_, a)| a.ip());
    let address = ip(c, "[media] address", &r.address)
        .or(first_listener)
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let advertise = ip(c, "[media] advertise", &r.advertise)
        .or_else(|| sip_advertise.and_then(|a| a.trim_matches(['[', ']']).parse::<IpAddr>().ok()))
        .or((!address.is_unspecified()).then_some(address));
    if let (Some(a), Some(v)) = (advertise, &r.advertise) {
        if a.is_unspecified() {
            c.err(
                "[media] advertise",
                v,
                "must be an address peers can send to",
            );
        }
    }
    let timeout = c.duration("[media] timeout", &r.timeout, Duration::from_secs(60));
    let hold_timeout = c.duration(
        "[media] hold_timeout",
        &r.hold_timeout,
        Duration::from_secs(3600),
    );
    let max_sessions = c.count(
        "[media] max_sessions",
        &r.max_sessions,
        1,
        1_000_000,
        10_000,
    );
    let srtp_suite = c.choice(
        "[media] srtp_suite",
        &r.srtp_suite,
        &[
            ("AES_CM_128_HMAC_SHA1_80", Suite::AesCm128HmacSha1_80),
            ("AES_CM_128_HMAC_SHA1_32", Suite::AesCm128HmacSha1_32),
            ("AEAD_AES_128_GCM", Suite::AeadAes128Gcm),
        ],
        Suite::AesCm128HmacSha1_80,
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = c.count("[media] workers", &r.workers, 1, 256, cores);
    let Some(advertise) = advertise else {
        if let Some(raw) = raw {
            c.err(
                "[media] advertise",
                raw,
                "is needed: the relay binds a wildcard address and [sip] advertise is not an IP address",
            );
        }
        return None;
    };
    Some(MediaSettings {
        policy,
        port_range,
        address,
        advertise,
        timeout,
        hold_timeout,
        max_sessions,
        workers,
        srtp_over_plain_sip: r.srtp_over_plain_sip.unwrap_or(false),
        srtp_suite,
    })
}

/// `"30000-39999"`.
fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("\"{s}\" is not FIRST-LAST, like \"30000-39999\""))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("\"{}\" is not a port number", p.trim()))
    };
    let (first, last) = (port(a)?, port(b)?);
    weir_media::ports::PortPool::new(first, last).map_err(|e| e.to_string())?;
    Ok((first, last))
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    fn errors(text: &str) -> Vec<(String, String)> {
        parse(text)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.key, e.message))
            .collect()
    }

    #[test]
    fn the_relay_is_on_by_default_on_the_listen_address() {
        let m = parse("").unwrap().media.unwrap();
        assert_eq!(m.policy, MediaPolicy::Auto);
        assert_eq!(m.port_range, (30_000, 39_999));
        assert_eq!(m.address, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(m.advertise, m.address);
        assert_eq!(m.timeout, Duration::from_secs(60));
        assert_eq!(m.hold_timeout, Duration::from_secs(3600));
        assert_eq!(m.srtp_suite, Suite::AesCm128HmacSha1_80);
        let gcm = parse("[media]\nsrtp_suite = \"AEAD_AES_128_GCM\"\n").unwrap();
        assert_eq!(gcm.media.unwrap().srtp_suite, Suite::AeadAes128Gcm);
        // A wildcard listener advertised by IP: the relay binds the wildcard
        // and writes the advertised address.
        let m = parse("[sip]\nlisten = [\"udp:0.0.0.0:5060\"]\nadvertise = \"203.0.113.7\"\n")
            .unwrap()
            .media
            .unwrap();
        assert!(m.address.is_unspecified());
        assert_eq!(m.advertise, IpAddr::from([203, 0, 113, 7]));
        // …advertised by name and no [media]: no relay rather than a guess.
        let c = parse("[sip]\nlisten = [\"udp:0.0.0.0:5060\"]\nadvertise = \"sip.example.com\"\n")
            .unwrap();
        assert_eq!(c.media, None);
        assert_eq!(parse("[media]\nmode = \"off\"\n").unwrap().media, None);
    }

    #[test]
    fn media_errors_name_the_key() {
        let e = errors(
            "[media]\nmode = \"sometimes\"\nport_range = \"40000-30000\"\naddress = \"here\"\ntimeout = \"0s\"\nmax_sessions = 0\nsrtp_suite = \"AES_256_CM_HMAC_SHA1_80\"\n",
        );
        let keys: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "[media] mode",
                "[media] port_range",
                "[media] address",
                "[media] timeout",
                "[media] max_sessions",
                "[media] srtp_suite"
            ],
            "{e:?}"
        );
        assert!(e[1].1.contains("empty or reversed"), "{e:?}");
        let e = errors("[media]\nport_range = \"80-90\"\n");
        assert!(e[0].1.contains("privileged"), "{e:?}");
        let e = errors("[media]\nport_range = \"30000\"\n");
        assert!(e[0].1.contains("FIRST-LAST"), "{e:?}");
        let e = errors(
            "[sip]\nlisten = [\"udp:0.0.0.0:5060\"]\nadvertise = \"sip.example.com\"\n[media]\nmode = \"auto\"\n",
        );
        assert_eq!(e[0].0, "[media] advertise", "{e:?}");
    }
}
