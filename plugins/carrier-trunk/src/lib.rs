//! `carrier-trunk`: the edge between a carrier's SIP trunk and the agents.
//! See README.md.

use std::net::IpAddr;

use weir_sdk::records::NumberEntry;
use weir_sdk::sip::{e164, Cidr, Uri};
use weir_sdk::{
    export_plugin, Config, Decision, Forward, Host, Plugin, Reply, Request, Target, Transport,
};

#[derive(Debug)]
pub struct CarrierTrunk {
    carrier_ranges: Vec<Cidr>,
    agent_ranges: Vec<Cidr>,
    default_country: String,
    termination: Option<Termination>,
    /// Named terminations (`trunks.NAME`): an imported number whose entry
    /// names a trunk calls out through it.
    trunks: Vec<(String, Termination)>,
    caller_id: Option<String>,
    /// Per agent (From user) caller IDs, checked E.164.
    caller_ids: Vec<(String, String)>,
    /// The proxy's `[acl]` lists that also count as carrier / agent sources.
    carrier_acls: Vec<String>,
    agent_acls: Vec<String>,
    /// Assert the caller ID to the carrier in P-Asserted-Identity.
    assert_identity: bool,
}

#[derive(Debug)]
struct Termination {
    /// `sip:HOST[:PORT][;params]` with the user replaced per call.
    uri: Uri,
    credential: Option<String>,
    transport: Option<Transport>,
}

fn ranges(config: &Config, key: &str) -> Result<Vec<Cidr>, String> {
    config
        .str_list(key)?
        .iter()
        .map(|s| Cidr::parse(s).map_err(|e| format!("config key {key}: {e}")))
        .collect()
}

fn e164_of(key: &str, value: &str) -> Result<String, String> {
    if e164::is_valid(value) {
        Ok(value.to_string())
    } else {
        Err(format!(
            "config key {key}: {value:?} is not an E.164 number (+ and 8–15 digits)"
        ))
    }
}

impl Plugin for CarrierTrunk {
    fn init(config: &Config, host: &Host) -> Result<Self, String> {
        config.deny_unknown(&[
            "carrier_ranges",
            "agent_ranges",
            "default_country",
            "termination_uri",
            "credential",
            "transport",
            "caller_id",
            "caller_ids",
            "carrier_acls",
            "agent_acls",
            "assert_identity",
            "trunks",
        ])?;
        let carrier_ranges = ranges(config, "carrier_ranges")?;
        let carrier_acls = acl_names(config, host, "carrier_acls")?;
        if carrier_ranges.is_empty() && carrier_acls.is_empty() {
            return Err(
                "config key carrier_ranges: list at least one carrier address range (or carrier_acls)"
                    .into(),
            );
        }
        let termination = parse_termination(config, "")?;
        let table = config.table("trunks")?;
        let mut trunks = Vec::new();
        for name in table.keys() {
            let t = table.table(name)?;
            let prefix = format!("trunks.{name}.");
            t.deny_unknown(&["termination_uri", "credential", "transport"])
                .map_err(|e| format!("{prefix}: {e}"))?;
            let Some(term) = parse_termination(&t, &prefix)? else {
                return Err(format!("config key {prefix}termination_uri: is required"));
            };
            trunks.push((name.to_string(), term));
        }
        let caller_id = match config.str("caller_id")? {
            Some(c) => Some(e164_of("caller_id", &c)?),
            None => None,
        };
        let ids = config.table("caller_ids")?;
        let mut caller_ids = Vec::new();
        for agent in ids.keys() {
            let Some(n) = ids.str(agent)? else { continue };
            caller_ids.push((
                agent.to_string(),
                e164_of(&format!("caller_ids.{agent}"), &n)?,
            ));
        }
        Ok(CarrierTrunk {
            carrier_ranges,
            agent_ranges: ranges(config, "agent_ranges")?,
            default_country: config.str_or("default_country", "1")?,
            termination,
            trunks,
            caller_id,
            caller_ids,
            carrier_acls,
            agent_acls: acl_names(config, host, "agent_acls")?,
            assert_identity: config.bool_or("assert_identity", false)?,
        })
    }

    fn on_request(&mut self, req: &Request, host: &Host) -> Decision {
        let ip_text = req.source().ip;
        let source: Option<IpAddr> = ip_text.parse().ok();
        let from = |ranges: &[Cidr], acls: &[String]| {
            source.is_some_and(|ip| ranges.iter().any(|r| r.contains(ip)))
                || acls
                    .iter()
                    .any(|name| host.acl_contains(name, &ip_text).unwrap_or(false))
        };
        if from(&self.carrier_ranges, &self.carrier_acls) {
            self.inbound(req, host)
        } else if from(&self.agent_ranges, &self.agent_acls) {
            self.outbound(req, host)
        } else {
            host.count("refused_source", 1);
            Reply::new(403).reason("Source Not Allowed").into()
        }
    }
}

impl CarrierTrunk {
    /// From the carrier: the dialled number in E.164, then the next plugin routes.
    fn inbound(&self, req: &Request, host: &Host) -> Decision {
        host.count("inbound", 1);
        let uri = req.request_uri();
        let Some(parsed) = Uri::parse(uri) else {
            return Reply::new(416).into();
        };
        let Some(user) = parsed.user_unescaped() else {
            return Reply::new(484).reason("No Number Dialled").into();
        };
        let Some(number) = e164::normalize(&user, &self.default_country) else {
            // Not a number: a call ID (`sip:{call_id}@…`) goes on unchanged.
            return Decision::Continue;
        };
        if number != user {
            let new = with_user(&parsed, &number);
            if let Err(e) = req.set_request_uri(&new) {
                return Reply::new(500)
                    .reason(format!("Cannot Rewrite Number ({e})"))
                    .into();
            }
        }
        Decision::Continue
    }

    /// From an agent: to the carrier's termination URI, with a verified caller ID.
    fn outbound(&self, req: &Request, host: &Host) -> Decision {
        if self.termination.is_none() && self.trunks.is_empty() {
            return Reply::new(403)
                .reason("Outbound Calling Not Configured")
                .into();
        }
        let Some(dialled) = req.request_user() else {
            return Reply::new(484).reason("No Number Dialled").into();
        };
        let Some(number) = e164::normalize(dialled, &self.default_country) else {
            return Reply::new(484).reason("Not An E.164 Number").into();
        };
        let agent = req.from_user().unwrap_or_default();
        // A caller ID the carrier will accept: the agent's own, else a number
        // the agent already uses that is imported (`PUT /v1/numbers`), else
        // the default.
        let imported = e164::normalize(agent, &self.default_country)
            .filter(|n| host.registry_get(&format!("num:{n}")).is_some());
        let caller = self
            .caller_ids
            .iter()
            .find(|(a, _)| *a == agent)
            .map(|(_, n)| n.clone())
            .or(imported)
            .or_else(|| self.caller_id.clone());
        // The trunk the caller ID's number is imported on, if it names one;
        // else the default termination. A trunk this plugin does not know is
        // refused: sending the number out through another carrier would fail
        // there, or worse, succeed with a number that carrier does not own.
        let trunk = caller
            .as_ref()
            .and_then(|c| host.registry_get(&format!("num:{c}")))
            .and_then(|v| NumberEntry::parse(&v))
            .and_then(|e| e.trunk);
        let term = match &trunk {
            Some(name) => match self.trunks.iter().find(|(n, _)| n == name) {
                Some((_, t)) => Some(t),
                None => {
                    host.count("unknown_trunk", 1);
                    return Reply::new(403)
                        .reason(format!("Trunk {name} Not Configured"))
                        .into();
                }
            },
            None => self.termination.as_ref(),
        };
        let Some(term) = term else {
            return Reply::new(403)
                .reason("No Trunk For This Caller (set its number's trunk or termination_uri)")
                .into();
        };
        if let Some(c) = &caller {
            if c != agent {
                if let Err(e) = req.set_from_user(c) {
                    return Reply::new(500)
                        .reason(format!("Cannot Set Caller ID ({e})"))
                        .into();
                }
            }
            if self.assert_identity {
                // The carrier trusts what the trunk asserts; what the agent
                // would have preferred is not the carrier's business.
                let asserted = format!("<sip:{c}@{}>", term.uri.host);
                let set = req
                    .remove_header("P-Preferred-Identity")
                    .and_then(|_| req.set_header("P-Asserted-Identity", &asserted));
                if let Err(e) = set {
                    return Reply::new(500)
                        .reason(format!("Cannot Assert Identity ({e})"))
                        .into();
                }
            }
        }
        host.count("outbound", 1);
        let mut target = Target::new(with_user(&term.uri, &number));
        if let Some(c) = &term.credential {
            target = target.credential(c.clone());
        }
        if let Some(t) = term.transport {
            target = target.transport(t);
        }
        Forward::to(target).into()
    }
}

/// `termination_uri`, `credential` and `transport` of `config` (keys named
/// with `prefix` in errors); None without a termination URI.
fn parse_termination(config: &Config, prefix: &str) -> Result<Option<Termination>, String> {
    let Some(t) = config.str("termination_uri")? else {
        return Ok(None);
    };
    let uri = Uri::parse(&t)
        .filter(|u| u.scheme != "tel")
        .ok_or_else(|| format!("config key {prefix}termination_uri: {t:?} is not a sip: URI"))?;
    let transport = match config.str("transport")?.as_deref() {
        None => None,
        Some("udp") => Some(Transport::Udp),
        Some("tcp") => Some(Transport::Tcp),
        Some("tls") => Some(Transport::Tls),
        Some(other) => {
            return Err(format!(
                "config key {prefix}transport: {other:?} is not udp, tcp or tls"
            ))
        }
    };
    Ok(Some(Termination {
        uri,
        credential: config.str("credential")?,
        transport,
    }))
}

/// The `[acl]` list names under `key`, each checked to exist.
fn acl_names(config: &Config, host: &Host, key: &str) -> Result<Vec<String>, String> {
    let names = config.str_list(key)?;
    for name in &names {
        host.acl_contains(name, "127.0.0.1")
            .map_err(|e| format!("config key {key}: {e}"))?;
    }
    Ok(names)
}

/// `uri` with the user part `user`.
fn with_user(uri: &Uri, user: &str) -> String {
    let mut out = format!("{}:{user}@{}", uri.scheme, uri.host);
    if let Some(p) = uri.port {
        out.push_str(&format!(":{p}"));
    }
    for (n, v) in &uri.params {
        out.push(';');
        out.push_str(n);
        if let Some(v) = v {
            out.push('=');
            out.push_str(v);
        }
    }
    out
}

export_plugin!(CarrierTrunk);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use weir_sdk::Edit;
    use weir_sdk::MockHost;

    const CONFIG: &str = r#"{
        "carrier_ranges": ["54.172.60.0/30", "2001:db8:c::/48"],
        "agent_ranges": ["10.0.0.0/8"],
        "termination_uri": "sip:acme.pstn.example.com;transport=tls",
        "credential": "acme-trunk",
        "caller_id": "+14155550100",
        "caller_ids": {"sales": "+14155550111"}
    }"#;

    fn req(ruri: &str, from_user: &str, ip: &str) -> Request<'static> {
        Request::mock(&format!(
            "INVITE {ruri} SIP/2.0\r\nFrom: \"A\" <sip:{from_user}@h>;tag=1\r\nTo: <{ruri}>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n"
        ))
        .unwrap()
        .with_source(ip, 5060, Transport::Udp)
    }

    fn plugin(host: &Host) -> CarrierTrunk {
        CarrierTrunk::init(&Config::parse(CONFIG).unwrap(), host).unwrap()
    }

    #[test]
    fn inbound_numbers_become_e164() {
        let host = MockHost::new().host();
        let mut p = plugin(&host);
        let r = req(
            "sip:(415)%20555-0100@weir.example.com",
            "carrier",
            "54.172.60.2",
        );
        assert_eq!(p.on_request(&r, &host), Decision::Continue);
        assert_eq!(
            r.mock_edits(),
            vec![Edit::SetRequestUri(
                "sip:+14155550100@weir.example.com".into()
            )]
        );
        // A call ID is not a number: unchanged.
        let r = req("sip:call-7f3a@weir.example.com", "carrier", "2001:db8:c::9");
        assert_eq!(p.on_request(&r, &host), Decision::Continue);
        assert!(r.mock_edits().is_empty());
    }

    #[test]
    fn outbound_goes_to_the_termination_with_a_verified_caller_id() {
        let host = MockHost::new().host();
        let mut p = plugin(&host);
        let r = req("sip:4155550123@weir.example.com", "sales", "10.1.2.3");
        let expected: Decision = Forward::to(
            Target::new("sip:+14155550123@acme.pstn.example.com;transport=tls")
                .credential("acme-trunk"),
        )
        .into();
        assert_eq!(p.on_request(&r, &host), expected);
        assert_eq!(
            r.mock_edits(),
            vec![Edit::SetFromUser("+14155550111".into())]
        );
        let r = req("sip:*69@weir.example.com", "bot", "10.1.2.3");
        assert!(matches!(
            p.on_request(&r, &host),
            Decision::Reply(Reply { status: 484, .. })
        ));
    }

    #[test]
    fn imported_numbers_are_kept_and_the_caller_id_can_be_asserted() {
        let mock = MockHost::new();
        let host = mock.host();
        mock.set_acl("agents", &["10.9.9.9"]);
        mock.registry_set("num:+14155550177", r#"{"agent":"sales"}"#, 0)
            .unwrap();
        let config = CONFIG.replacen(
            '{',
            r#"{"agent_acls":["agents"],"assert_identity":true,"#,
            1,
        );
        let mut p = CarrierTrunk::init(&Config::parse(&config).unwrap(), &host).unwrap();
        // From an [acl] list, From an imported number: kept, and asserted.
        let r = Request::mock(
            "INVITE sip:4155550123@weir.example.com SIP/2.0\r\nFrom: <sip:4155550177@h>;tag=1\r\n\
             To: <sip:4155550123@weir.example.com>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
             P-Preferred-Identity: <sip:+19995550000@agent>\r\n\r\n",
        )
        .unwrap()
        .with_source("10.9.9.9", 5060, Transport::Udp);
        assert!(matches!(p.on_request(&r, &host), Decision::Forward(_)));
        assert_eq!(
            r.mock_edits(),
            vec![
                Edit::SetFromUser("+14155550177".into()),
                Edit::RemoveHeader("P-Preferred-Identity".into()),
                Edit::SetHeader(
                    "P-Asserted-Identity".into(),
                    "<sip:+14155550177@acme.pstn.example.com>".into()
                ),
            ]
        );
        // An unknown list is a configuration error.
        let bad = CONFIG.replacen('{', r#"{"carrier_acls":["nope"],"#, 1);
        let e = CarrierTrunk::init(&Config::parse(&bad).unwrap(), &host).unwrap_err();
        assert!(e.contains("carrier_acls") && e.contains("nope"), "{e}");
    }

    #[test]
    fn other_sources_are_refused() {
        let mock = MockHost::new();
        let host = mock.host();
        let mut p = plugin(&host);
        let r = req("sip:+14155550100@weir.example.com", "x", "203.0.113.9");
        assert!(matches!(
            p.on_request(&r, &host),
            Decision::Reply(Reply { status: 403, .. })
        ));
        assert_eq!(mock.counter("refused_source"), 1);
    }

    #[test]
    fn bad_config_names_the_key() {
        let host = MockHost::new().host();
        for (json, key) in [
            (r#"{"carrier_ranges":[]}"#, "carrier_ranges"),
            (r#"{"carrier_ranges":["1.2.3.0/40"]}"#, "carrier_ranges"),
            (
                r#"{"carrier_ranges":["1.2.3.0/24"],"caller_id":"415"}"#,
                "caller_id",
            ),
            (
                r#"{"carrier_ranges":["1.2.3.0/24"],"termination_uri":"x"}"#,
                "termination_uri",
            ),
        ] {
            let e = CarrierTrunk::init(&Config::parse(json).unwrap(), &host).unwrap_err();
            assert!(e.contains(key), "{json}: {e}");
        }
    }

    #[test]
    fn an_imported_numbers_trunk_carries_its_outbound_calls() {
        let mock = MockHost::new();
        let host = mock.host();
        mock.registry_set("num:+14155550177", r#"{"agent":"sales","trunk":"eu"}"#, 0)
            .unwrap();
        mock.registry_set("num:+14155550188", r#"{"agent":"ops","trunk":"gone"}"#, 0)
            .unwrap();
        let config = CONFIG.replacen(
            '{',
            r#"{"trunks":{"eu":{"termination_uri":"sip:eu.pstn.example.net","credential":"eu-trunk","transport":"tcp"}},"#,
            1,
        );
        let mut p = CarrierTrunk::init(&Config::parse(&config).unwrap(), &host).unwrap();
        let expected: Decision = Forward::to(
            Target::new("sip:+14155550123@eu.pstn.example.net")
                .credential("eu-trunk")
                .transport(Transport::Tcp),
        )
        .into();
        let r = req(
            "sip:4155550123@weir.example.com",
            "+14155550177",
            "10.1.2.3",
        );
        assert_eq!(p.on_request(&r, &host), expected);
        // The caller ID decides, not the agent's From: an agent whose
        // configured caller ID is the eu number goes out through eu too.
        let r = req("sip:4155550123@weir.example.com", "bot", "10.1.2.3");
        let via_caller_id = config.replace(
            r#""caller_id": "+14155550100""#,
            r#""caller_id": "+14155550177""#,
        );
        let mut q = CarrierTrunk::init(&Config::parse(&via_caller_id).unwrap(), &host).unwrap();
        assert_eq!(q.on_request(&r, &host), expected);
        // A caller ID without a trunk: the default termination.
        let default: Decision = Forward::to(
            Target::new("sip:+14155550123@acme.pstn.example.com;transport=tls")
                .credential("acme-trunk"),
        )
        .into();
        assert_eq!(p.on_request(&r, &host), default);
        // A trunk this plugin does not know: refused, saying which.
        let r = req(
            "sip:4155550123@weir.example.com",
            "+14155550188",
            "10.1.2.3",
        );
        assert!(matches!(
            p.on_request(&r, &host),
            Decision::Reply(Reply { status: 403, ref reason, .. }) if reason == "Trunk gone Not Configured"
        ));
        // Only trunks, no default: a caller without one is told why.
        let only = r#"{"carrier_ranges":["1.2.3.0/24"],"agent_ranges":["10.0.0.0/8"],
            "trunks":{"eu":{"termination_uri":"sip:eu.pstn.example.net"}}}"#;
        let mut p = CarrierTrunk::init(&Config::parse(only).unwrap(), &host).unwrap();
        let r = req("sip:4155550123@weir.example.com", "bot", "10.1.2.3");
        assert!(matches!(
            p.on_request(&r, &host),
            Decision::Reply(Reply { status: 403, .. })
        ));
        // Bad trunk tables are named.
        for (bad, key) in [
            (
                r#"{"carrier_ranges":["1.2.3.0/24"],"trunks":{"x":{}}}"#,
                "trunks.x.termination_uri",
            ),
            (
                r#"{"carrier_ranges":["1.2.3.0/24"],"trunks":{"x":{"termination_uri":"tel:+1"}}}"#,
                "trunks.x.termination_uri",
            ),
            (
                r#"{"carrier_ranges":["1.2.3.0/24"],"trunks":{"x":{"termination_uri":"sip:a","port":1}}}"#,
                "port",
            ),
        ] {
            let e = CarrierTrunk::init(&Config::parse(bad).unwrap(), &host).unwrap_err();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }
}
