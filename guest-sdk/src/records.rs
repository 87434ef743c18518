//! The registry entries the admin API writes for registered calls
//! (`POST /v1/calls` → `call:{call_id}`) and imported numbers
//! (`PUT /v1/numbers/{e164}` → `num:{e164}`), read the same way by every
//! plugin. A bare value (an agent name or a SIP URI, as written through
//! `/v1/registry`) is read as an entry naming only the agent.

use serde_json::{Map, Value};

/// A call registered through the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallEntry {
    /// An agent name (resolved through `agent:NAME`) or a SIP URI.
    pub agent: String,
    pub from: Option<String>,
    pub to: Option<String>,
    /// `inbound` or `outbound`, when given.
    pub direction: Option<String>,
    /// An INVITE has already reached the agent.
    pub used: bool,
}

/// An imported number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberEntry {
    pub agent: String,
    /// The trunk its outbound calls go through, when given.
    pub trunk: Option<String>,
}

fn object(value: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str::<Value>(value) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

fn text(m: &Map<String, Value>, key: &str) -> Option<String> {
    m.get(key).and_then(Value::as_str).map(str::to_string)
}

fn bare(value: &str) -> Option<String> {
    let v = value.trim();
    (!v.is_empty() && !v.starts_with('{')).then(|| v.to_string())
}

impl CallEntry {
    /// Reads a `call:` value; `None` when it names no agent.
    pub fn parse(value: &str) -> Option<CallEntry> {
        if let Some(agent) = bare(value) {
            return Some(CallEntry {
                agent,
                from: None,
                to: None,
                direction: None,
                used: false,
            });
        }
        let m = object(value)?;
        Some(CallEntry {
            agent: text(&m, "agent").filter(|a| !a.is_empty())?,
            from: text(&m, "from"),
            to: text(&m, "to"),
            direction: text(&m, "direction"),
            used: m.get("used").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    /// `value` with `used` set (everything else, metadata included, kept);
    /// `None` for a bare value, which has nowhere to record it.
    pub fn mark_used(value: &str) -> Option<String> {
        let mut m = object(value)?;
        m.insert("used".into(), Value::Bool(true));
        Some(Value::Object(m).to_string())
    }
}

impl NumberEntry {
    /// Reads a `num:` value; `None` when it names no agent.
    pub fn parse(value: &str) -> Option<NumberEntry> {
        if let Some(agent) = bare(value) {
            return Some(NumberEntry { agent, trunk: None });
        }
        let m = object(value)?;
        Some(NumberEntry {
            agent: text(&m, "agent").filter(|a| !a.is_empty())?,
            trunk: text(&m, "trunk"),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bare_values_and_api_entries_read_alike() {
        assert_eq!(CallEntry::parse("sales").unwrap().agent, "sales");
        assert_eq!(
            CallEntry::parse("sip:a@10.0.0.7:5080").unwrap().agent,
            "sip:a@10.0.0.7:5080"
        );
        let v = r#"{"agent":"sales","from":"+14155550100","direction":"inbound","metadata":{"k":1},"used":false}"#;
        let c = CallEntry::parse(v).unwrap();
        assert_eq!(
            (c.agent.as_str(), c.from.as_deref(), c.to, c.used),
            ("sales", Some("+14155550100"), None, false)
        );
        let used = CallEntry::mark_used(v).unwrap();
        assert!(CallEntry::parse(&used).unwrap().used);
        assert!(used.contains(r#""metadata":{"k":1}"#), "{used}");
        assert_eq!(CallEntry::mark_used("sales"), None);
        assert_eq!(CallEntry::parse(r#"{"from":"+1"}"#), None);
        assert_eq!(CallEntry::parse("{not json"), None);
        let n = NumberEntry::parse(r#"{"agent":"support","trunk":"twilio-us1"}"#).unwrap();
        assert_eq!(n.trunk.as_deref(), Some("twilio-us1"));
        assert_eq!(NumberEntry::parse("support").unwrap().trunk, None);
    }
}
