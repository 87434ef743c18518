//! `header-rules`: add, strip or pass `X-` and `User-to-User` headers by rule.
//! See README.md.

use weir_sdk::{export_plugin, Config, Decision, Host, Plugin, Reply, Request};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// Keep matching headers (stops later strip rules from matching them).
    Pass,
    /// Remove matching headers.
    Strip,
    /// Add a line (after any existing ones).
    Add,
    /// Replace every line of the header with one.
    Set,
}

#[derive(Debug, Clone)]
struct Rule {
    action: Action,
    /// For pass/strip: a header name, or a prefix ending in `*` (any case).
    pattern: String,
    /// For add/set: the header and its value template.
    name: String,
    value: String,
    /// Only for these methods (empty: all).
    methods: Vec<String>,
}

#[derive(Debug)]
pub struct HeaderRules {
    rules: Vec<Rule>,
    /// What happens to an `X-`/`User-to-User` header no pass/strip rule matches.
    unmatched_strip: bool,
}

/// Headers these rules may touch: the ones applications own.
fn governed(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("x-")
        || n == "user-to-user"
        || n == "remote-party-id"
        || n == "p-preferred-identity"
        || n == "p-called-party-id"
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix)),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

impl Plugin for HeaderRules {
    fn init(config: &Config, _host: &Host) -> Result<Self, String> {
        config.deny_unknown(&["rules", "unmatched"])?;
        let unmatched_strip = match config.str_or("unmatched", "pass")?.as_str() {
            "pass" => false,
            "strip" => true,
            other => {
                return Err(format!(
                    "config key unmatched: {other:?} is not pass or strip"
                ))
            }
        };
        let mut rules = Vec::new();
        for (i, r) in config.table_list("rules")?.iter().enumerate() {
            let key = |k: &str| format!("rules[{i}].{k}");
            r.deny_unknown(&["action", "match", "name", "value", "methods"])
                .map_err(|e| format!("{}: {e}", key("")))?;
            let action = match r
                .required_str("action")
                .map_err(|_| format!("config key {} is required", key("action")))?
                .as_str()
            {
                "pass" => Action::Pass,
                "strip" => Action::Strip,
                "add" => Action::Add,
                "set" => Action::Set,
                other => {
                    return Err(format!(
                        "config key {}: {other:?} is not pass, strip, add or set",
                        key("action")
                    ))
                }
            };
            let (pattern, name, value) = match action {
                Action::Pass | Action::Strip => {
                    let m = r
                        .str("match")?
                        .ok_or_else(|| format!("config key {} is required", key("match")))?;
                    if !governed(m.trim_end_matches('*')) && !m.eq_ignore_ascii_case("x-*") {
                        return Err(format!(
                            "config key {}: {m:?} is not an X-, User-to-User or identity header",
                            key("match")
                        ));
                    }
                    (m, String::new(), String::new())
                }
                Action::Add | Action::Set => {
                    let n = r
                        .str("name")?
                        .ok_or_else(|| format!("config key {} is required", key("name")))?;
                    if !governed(&n) {
                        return Err(format!(
                            "config key {}: {n:?} is not an X-, User-to-User or identity header",
                            key("name")
                        ));
                    }
                    let v = r
                        .str("value")?
                        .ok_or_else(|| format!("config key {} is required", key("value")))?;
                    if v.contains(['\r', '\n']) {
                        return Err(format!(
                            "config key {}: line breaks are not allowed",
                            key("value")
                        ));
                    }
                    (String::new(), n, v)
                }
            };
            rules.push(Rule {
                action,
                pattern,
                name,
                value,
                methods: r.str_list("methods")?,
            });
        }
        Ok(HeaderRules {
            rules,
            unmatched_strip,
        })
    }

    fn on_request(&mut self, req: &Request, host: &Host) -> Decision {
        let method = req.method();
        let applies = |r: &Rule| {
            r.methods.is_empty() || r.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
        };
        let mut names = req.header_names();
        names.sort_by_key(|n| n.to_ascii_lowercase());
        names.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
        for name in names.iter().filter(|n| governed(n)) {
            let rule = self
                .rules
                .iter()
                .filter(|r| matches!(r.action, Action::Pass | Action::Strip) && applies(r))
                .find(|r| matches(&r.pattern, name));
            let strip = match rule {
                Some(r) => r.action == Action::Strip,
                None => self.unmatched_strip,
            };
            if strip {
                if let Err(e) = req.remove_header(name) {
                    return Reply::new(500)
                        .reason(format!("Header Rule Failed ({e})"))
                        .into();
                }
                host.count("stripped", 1);
            }
        }
        for r in self.rules.iter().filter(|r| applies(r)) {
            let value = expand(&r.value, req);
            let done = match r.action {
                Action::Add => req.append_header(&r.name, &value),
                Action::Set => req.set_header(&r.name, &value),
                Action::Pass | Action::Strip => continue,
            };
            if let Err(e) = done {
                return Reply::new(500)
                    .reason(format!("Header Rule Failed ({e})"))
                    .into();
            }
        }
        Decision::Continue
    }
}

/// Fills `{call_id}`, `{from_user}`, `{to_user}`, `{source_ip}` and `{method}`.
fn expand(template: &str, req: &Request) -> String {
    if !template.contains('{') {
        return template.to_string();
    }
    let mut out = template.to_string();
    let source = req.source();
    for (k, v) in [
        ("{call_id}", req.call_id()),
        ("{from_user}", req.from_user().unwrap_or_default()),
        ("{to_user}", req.to_user().unwrap_or_default()),
        ("{source_ip}", source.ip.as_str()),
        ("{method}", req.method()),
    ] {
        if out.contains(k) {
            out = out.replace(k, v);
        }
    }
    out.retain(|c| c != '\r' && c != '\n');
    out
}

export_plugin!(HeaderRules);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use weir_sdk::{Edit, MockHost};

    fn req() -> Request<'static> {
        Request::mock(
            "INVITE sip:+14155550100@w SIP/2.0\r\nFrom: <sip:carrier@h>;tag=1\r\nTo: <sip:+14155550100@w>\r\n\
Call-ID: c9\r\nCSeq: 1 INVITE\r\nX-Twilio-CallSid: CA1\r\nX-Internal-Debug: 1\r\nx-internal-trace: 2\r\n\
User-to-User: 00ff;encoding=hex\r\nX-Other: o\r\n\r\n",
        )
        .unwrap()
    }

    fn plugin(json: &str) -> HeaderRules {
        HeaderRules::init(&Config::parse(json).unwrap(), &MockHost::new().host()).unwrap()
    }

    #[test]
    fn strip_pass_and_add_by_rule() {
        let mut p = plugin(
            r#"{"unmatched":"strip","rules":[
                {"action":"pass","match":"X-Twilio-*"},
                {"action":"pass","match":"User-to-User"},
                {"action":"strip","match":"X-Internal-*"},
                {"action":"add","name":"X-Edge-Call","value":"{call_id}/{source_ip}"},
                {"action":"set","name":"X-Route","value":"weir","methods":["INVITE"]}
            ]}"#,
        );
        let r = req();
        assert_eq!(
            p.on_request(&r, &MockHost::new().host()),
            Decision::Continue
        );
        let edits = r.mock_edits();
        assert!(
            edits.contains(&Edit::RemoveHeader("X-Internal-Debug".into())),
            "{edits:?}"
        );
        assert!(
            edits.contains(&Edit::RemoveHeader("x-internal-trace".into())),
            "{edits:?}"
        );
        assert!(
            edits.contains(&Edit::RemoveHeader("X-Other".into())),
            "unmatched: {edits:?}"
        );
        assert!(!edits.iter().any(|e| matches!(e, Edit::RemoveHeader(n) if n.starts_with("X-Twilio") || n == "User-to-User")));
        assert!(edits.contains(&Edit::AppendHeader(
            "X-Edge-Call".into(),
            "c9/192.0.2.1".into()
        )));
        assert!(edits.contains(&Edit::SetHeader("X-Route".into(), "weir".into())));
    }

    #[test]
    fn unmatched_pass_keeps_everything() {
        let mut p = plugin(r#"{"rules":[{"action":"strip","match":"X-Internal-*"}]}"#);
        let r = req();
        p.on_request(&r, &MockHost::new().host());
        assert_eq!(r.mock_edits().len(), 2);
    }

    #[test]
    fn rules_cannot_touch_other_headers() {
        let host = MockHost::new().host();
        for json in [
            r#"{"rules":[{"action":"strip","match":"Via"}]}"#,
            r#"{"rules":[{"action":"set","name":"Contact","value":"x"}]}"#,
            r#"{"rules":[{"action":"drop","match":"X-A"}]}"#,
            r#"{"rules":[{"action":"add","name":"X-A"}]}"#,
        ] {
            let e = HeaderRules::init(&Config::parse(json).unwrap(), &host).unwrap_err();
            assert!(e.contains("rules[0]"), "{json}: {e}");
        }
    }
}
