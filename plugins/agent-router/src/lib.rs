//! `agent-router`: maps `sip:{call_id}@…` and dialled E.164 numbers to agents
//! through the registry. See README.md.

use weir_sdk::records::{CallEntry, NumberEntry};
use weir_sdk::sip::{e164, Uri};
use weir_sdk::{export_plugin, Config, Decision, Forward, Host, Level, Plugin, Reply, Request};

/// The plugin's configuration, checked at `init`.
#[derive(Debug)]
pub struct AgentRouter {
    call_prefix: String,
    number_prefix: String,
    agent_prefix: String,
    default_country: String,
    fallback: Option<String>,
    methods: Vec<String>,
    used_ttl_s: u32,
}

impl Plugin for AgentRouter {
    fn init(config: &Config, _host: &Host) -> Result<Self, String> {
        config.deny_unknown(&[
            "call_prefix",
            "number_prefix",
            "agent_prefix",
            "default_country",
            "fallback",
            "methods",
            "used_ttl_s",
        ])?;
        let fallback = config.str("fallback")?;
        if let Some(f) = &fallback {
            if Uri::parse(f).is_none_or(|u| u.scheme == "tel") {
                return Err(format!("config key fallback: {f:?} is not a sip: URI"));
            }
        }
        let default_country = config.str_or("default_country", "1")?;
        if default_country.is_empty() || !default_country.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "config key default_country: {default_country:?} is not a country calling code"
            ));
        }
        let mut methods = config.str_list("methods")?;
        if methods.is_empty() {
            methods = [
                "INVITE",
                "MESSAGE",
                "SUBSCRIBE",
                "OPTIONS",
                "REFER",
                "NOTIFY",
            ]
            .map(String::from)
            .to_vec();
        }
        Ok(AgentRouter {
            call_prefix: config.str_or("call_prefix", "call:")?,
            number_prefix: config.str_or("number_prefix", "num:")?,
            agent_prefix: config.str_or("agent_prefix", "agent:")?,
            default_country,
            fallback,
            methods,
            used_ttl_s: u32::try_from(config.u64_or("used_ttl_s", 4 * 3600)?)
                .map_err(|_| "config key used_ttl_s: too large".to_string())?,
        })
    }

    fn on_request(&mut self, req: &Request, host: &Host) -> Decision {
        let method = req.method();
        if !self.methods.iter().any(|m| m.eq_ignore_ascii_case(method)) {
            return Decision::Continue;
        }
        let Some(user) = req.request_user() else {
            return self.nothing_matched(host, "no user part in the Request-URI");
        };
        let number = e164::normalize(user, &self.default_country);
        let call_key = format!("{}{user}", self.call_prefix);
        let agent = match host.registry_get(&call_key) {
            Some(value) => {
                let Some(call) = CallEntry::parse(&value) else {
                    return self.nothing_matched(host, user);
                };
                // A call registered through the API: the first INVITE uses it,
                // and it then outlives its registration TTL.
                if !call.used && method.eq_ignore_ascii_case("INVITE") {
                    if let Some(used) = CallEntry::mark_used(&value) {
                        if let Err(e) = host.registry_set(&call_key, &used, self.used_ttl_s) {
                            host.log(Level::Warn, &format!("cannot mark {call_key} used: {e}"));
                        }
                    }
                }
                call.agent
            }
            None => match number
                .as_ref()
                .and_then(|n| host.registry_get(&format!("{}{n}", self.number_prefix)))
                .and_then(|v| NumberEntry::parse(&v))
            {
                Some(n) => n.agent,
                None => return self.nothing_matched(host, user),
            },
        };
        // An entry names a SIP URI, or an agent whose URI is stored under
        // `agent:NAME` (so many numbers can follow one agent's moves).
        let uri = if agent.starts_with("sip:") || agent.starts_with("sips:") {
            agent
        } else {
            match host.registry_get(&format!("{}{agent}", self.agent_prefix)) {
                Some(u) => u,
                None => {
                    host.count("agent_offline", 1);
                    return Reply::new(480)
                        .reason(format!("Agent {agent} Unavailable"))
                        .into();
                }
            }
        };
        host.count("routed", 1);
        Forward::to(uri).into()
    }
}

impl AgentRouter {
    fn nothing_matched(&self, host: &Host, what: &str) -> Decision {
        host.count("unmatched", 1);
        match &self.fallback {
            Some(f) => Forward::to(f.as_str()).into(),
            None => {
                host.log(Level::Debug, &format!("no agent for {what}"));
                Reply::new(404).reason("No Agent For This Number").into()
            }
        }
    }
}

export_plugin!(AgentRouter);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use weir_sdk::MockHost;

    fn invite(ruri: &str) -> Request<'static> {
        Request::mock(&format!(
            "INVITE {ruri} SIP/2.0\r\nFrom: <sip:carrier@192.0.2.1>;tag=1\r\n\
             To: <{ruri}>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\r\n"
        ))
        .unwrap()
    }

    fn plugin(json: &str, host: &Host) -> AgentRouter {
        AgentRouter::init(&Config::parse(json).unwrap(), host).unwrap()
    }

    #[test]
    fn call_ids_and_numbers_reach_their_agents() {
        let mock = MockHost::new();
        let host = mock.host();
        mock.registry_set("call:abc123", "sip:agent7@10.0.0.7:5080", 0)
            .unwrap();
        mock.registry_set("num:+14155550100", "sales", 0).unwrap();
        mock.registry_set("agent:sales", "sip:sales@10.0.0.8", 0)
            .unwrap();
        let mut p = plugin("{}", &host);
        assert_eq!(
            p.on_request(&invite("sip:abc123@weir.example.com"), &host),
            Forward::to("sip:agent7@10.0.0.7:5080").into()
        );
        // A national number is normalised before the look-up.
        assert_eq!(
            p.on_request(&invite("sip:4155550100@weir.example.com"), &host),
            Forward::to("sip:sales@10.0.0.8").into()
        );
        assert_eq!(mock.counter("routed"), 2);
    }

    #[test]
    fn calls_registered_through_the_api_are_marked_used_by_their_invite() {
        let mock = MockHost::new();
        let host = mock.host();
        mock.registry_set(
            "call:c0ffee",
            r#"{"agent":"sip:agent@10.0.0.7","metadata":{"lead":42},"used":false}"#,
            300,
        )
        .unwrap();
        mock.registry_set(
            "num:+14155550100",
            r#"{"agent":"sip:sales@10.0.0.8","trunk":"t1"}"#,
            0,
        )
        .unwrap();
        let mut p = plugin("{}", &host);
        assert_eq!(
            p.on_request(&invite("sip:c0ffee@weir.example.com"), &host),
            Forward::to("sip:agent@10.0.0.7").into()
        );
        let used = mock.registry_get("call:c0ffee").unwrap();
        assert!(
            used.contains(r#""used":true"#) && used.contains("lead"),
            "{used}"
        );
        assert_eq!(
            p.on_request(&invite("sip:+14155550100@weir.example.com"), &host),
            Forward::to("sip:sales@10.0.0.8").into()
        );
    }

    #[test]
    fn unmatched_calls_get_404_or_480_or_the_fallback() {
        let mock = MockHost::new();
        let host = mock.host();
        mock.registry_set("num:+14155550101", "support", 0).unwrap();
        let mut p = plugin("{}", &host);
        let Decision::Reply(r) = p.on_request(&invite("sip:nobody@weir.example.com"), &host) else {
            panic!("reply expected");
        };
        assert_eq!(r.status, 404);
        let Decision::Reply(r) = p.on_request(&invite("sip:+14155550101@w"), &host) else {
            panic!("reply expected");
        };
        assert_eq!(
            (r.status, r.reason.as_str()),
            (480, "Agent support Unavailable")
        );
        let mut p = plugin(r#"{"fallback":"sip:queue@10.0.0.9"}"#, &host);
        assert_eq!(
            p.on_request(&invite("sip:nobody@w"), &host),
            Forward::to("sip:queue@10.0.0.9").into()
        );
    }

    #[test]
    fn bad_config_is_refused_with_the_key() {
        let host = MockHost::new().host();
        let e = AgentRouter::init(&Config::parse(r#"{"fallback":"tel:+1"}"#).unwrap(), &host);
        assert!(e.unwrap_err().contains("fallback"));
        let e = AgentRouter::init(&Config::parse(r#"{"falback":"x"}"#).unwrap(), &host);
        assert!(e.unwrap_err().contains("falback"));
    }

    #[test]
    fn other_methods_pass_to_the_next_plugin() {
        let host = MockHost::new().host();
        let mut p = plugin("{}", &host);
        let reg = Request::mock(
            "REGISTER sip:w SIP/2.0\r\nFrom: <sip:a@w>;tag=1\r\nTo: <sip:a@w>\r\nCall-ID: r\r\nCSeq: 1 REGISTER\r\n\r\n",
        )
        .unwrap();
        assert_eq!(p.on_request(&reg, &host), Decision::Continue);
    }
}
