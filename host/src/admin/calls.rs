//! `/v1/calls` (the "dial to SIP URI" flow) and `/v1/numbers` (imported
//! numbers), kept in the registry where plugins read them (`call:{id}`,
//! `num:{e164}`; see `weir_sdk::records`).
//!
//! A call is registered with its agent and expires unless an INVITE uses it
//! first (agent-router then marks it used and keeps it longer). Telephony
//! providers retry webhooks, so an `Idempotency-Key` makes a repeated POST
//! return the call the first one made.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::{api_error, error, Admin, ApiError};

/// How long an unused call stays registered, by default and at most.
const CALL_TTL_DEFAULT_S: u64 = 300;
const CALL_TTL_MAX_S: u64 = 24 * 3600;
/// How long an idempotency key is remembered (providers retry for hours).
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
const METADATA_MAX: usize = 4096;

pub(super) fn bad(field: &str, message: impl Into<String>) -> ApiError {
    api_error(StatusCode::BAD_REQUEST, field, message)
}

pub(super) fn body_object(body: &[u8], example: &str) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad(
            "body",
            format!("expected a JSON object like {example}"),
        )),
        Err(e) => Err(bad("body", format!("not JSON: {e} (expected {example})"))),
    }
}

pub(super) fn no_unknown(m: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    match m.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(bad(
            k,
            format!("unknown field (known: {})", known.join(", ")),
        )),
        None => Ok(()),
    }
}

pub(super) fn opt_str<'a>(
    m: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ApiError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(bad(field, format!("must be a string, not {v}"))),
    }
}

/// `+` and 8 to 15 digits, the first not 0 (ITU-T E.164).
pub(crate) fn is_e164(s: &str) -> bool {
    let Some(d) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
}

/// An agent: a name (looked up under `agent:NAME`) or a SIP URI.
fn agent(m: &Map<String, Value>) -> Result<String, ApiError> {
    let Some(a) = opt_str(m, "agent")? else {
        return Err(bad("agent", "is required (an agent name or a sip: URI)"));
    };
    let uri_ok =
        (a.starts_with("sip:") || a.starts_with("sips:")) && weir_sip::uri::Uri::parse(a).is_ok();
    let name_ok = !a.is_empty()
        && a.len() <= 64
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if uri_ok || name_ok {
        Ok(a.to_string())
    } else {
        Err(bad(
            "agent",
            format!("{a:?} is neither an agent name (letters, digits, - _ .) nor a sip: URI"),
        ))
    }
}

fn number_field(m: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match opt_str(m, field)? {
        None => Ok(None),
        Some(n) if is_e164(n) => Ok(Some(n.to_string())),
        Some(n) => Err(bad(
            field,
            format!("{n:?} is not an E.164 number (+ and 8 to 15 digits)"),
        )),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn new_call_id() -> String {
    let bytes: [u8; 12] = rand::random();
    let mut id = String::from("c");
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// The call as the API shows it (from its registry entry).
fn call_json(a: &Admin, call_id: &str, stored: &str, ttl_left_s: Option<u64>) -> Value {
    let mut v =
        serde_json::from_str::<Value>(stored).unwrap_or_else(|_| json!({ "agent": stored }));
    if let Value::Object(m) = &mut v {
        m.insert("call_id".into(), json!(call_id));
        m.insert(
            "sip_uri".into(),
            json!(format!("sip:{call_id}@{}", a.sip_host)),
        );
        m.insert("expires_in_s".into(), json!(ttl_left_s));
        m.remove("idempotency");
    }
    v
}

fn stored_call(a: &Admin, call_id: &str) -> Option<(String, Option<u64>)> {
    let key = format!("call:{call_id}");
    a.services
        .registry
        .list(&key, 1, Instant::now())
        .into_iter()
        .find(|e| e.key == key)
        .map(|e| (e.value, e.ttl_left_s))
}

/// `POST /v1/calls`: `{"agent", "from"?, "to"?, "direction"?, "metadata"?,
/// "ttl_s"?}`, with an optional `Idempotency-Key` header.
pub(super) async fn create_call(
    State(a): State<Admin>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match create(&a, &headers, &body) {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn create(a: &Admin, headers: &HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
    let example = r#"{"agent": "sales", "from": "+14155550100", "ttl_s": 300}"#;
    let m = body_object(body, example)?;
    no_unknown(
        &m,
        &["agent", "from", "to", "direction", "metadata", "ttl_s"],
    )?;
    let agent = agent(&m)?;
    let from = number_field(&m, "from")?;
    let to = number_field(&m, "to")?;
    let direction = match opt_str(&m, "direction")? {
        None => None,
        Some(d @ ("inbound" | "outbound")) => Some(d.to_string()),
        Some(d) => {
            return Err(bad(
                "direction",
                format!("{d:?} is not \"inbound\" or \"outbound\""),
            ))
        }
    };
    let metadata = match m.get("metadata") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) if v.to_string().len() <= METADATA_MAX => Some(v.clone()),
        Some(Value::Object(_)) => {
            return Err(bad(
                "metadata",
                format!("is larger than {METADATA_MAX} bytes"),
            ))
        }
        Some(v) => return Err(bad("metadata", format!("must be an object, not {v}"))),
    };
    let ttl = match m.get("ttl_s") {
        None | Some(Value::Null) => CALL_TTL_DEFAULT_S,
        Some(t) => match t.as_u64() {
            Some(n) if (1..=CALL_TTL_MAX_S).contains(&n) => n,
            _ => {
                return Err(bad(
                    "ttl_s",
                    format!("must be a whole number of seconds, 1..={CALL_TTL_MAX_S}, not {t}"),
                ))
            }
        },
    };
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()) => {
                Some(k.to_string())
            }
            _ => {
                return Err(bad(
                    "Idempotency-Key",
                    "must be 1 to 255 visible ASCII characters",
                ))
            }
        },
    };
    let now = Instant::now();
    // What the request asked for, to tell a retry from a different request
    // that reuses a key.
    let fingerprint = {
        let canonical = json!([agent, from, to, direction, metadata, ttl]).to_string();
        let d = Sha256::digest(canonical.as_bytes());
        d[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let idem_key = key.as_ref().map(|k| format!("idem:call:{k}"));
    if let Some(ik) = &idem_key {
        if let Some(seen) = a.services.registry.get(ik, now) {
            let (call_id, print) = seen.split_once(' ').unwrap_or((seen.as_str(), ""));
            if print != fingerprint {
                return Err(api_error(
                    StatusCode::CONFLICT,
                    "Idempotency-Key",
                    "was used before with a different request",
                ));
            }
            if let Some((stored, ttl_left)) = stored_call(a, call_id) {
                return Ok((
                    StatusCode::OK,
                    Json(call_json(a, call_id, &stored, ttl_left)),
                )
                    .into_response());
            }
            // The call expired or was deleted: the key makes a new one.
        }
    }
    let call_id = new_call_id();
    let mut entry = Map::new();
    entry.insert("agent".into(), json!(agent));
    for (k, v) in [("from", from), ("to", to), ("direction", direction)] {
        if let Some(v) = v {
            entry.insert(k.into(), json!(v));
        }
    }
    if let Some(md) = metadata {
        entry.insert("metadata".into(), md);
    }
    entry.insert("created_unix_ms".into(), json!(unix_ms()));
    entry.insert("used".into(), json!(false));
    let stored = Value::Object(entry).to_string();
    a.services
        .registry
        .set(
            &format!("call:{call_id}"),
            &stored,
            Duration::from_secs(ttl),
            now,
        )
        .map_err(|e| bad(e.field, e.message))?;
    if let Some(ik) = &idem_key {
        a.services
            .registry
            .set(
                ik,
                &format!("{call_id} {fingerprint}"),
                IDEMPOTENCY_TTL,
                now,
            )
            .map_err(|e| bad("Idempotency-Key", e.message))?;
    }
    Ok((
        StatusCode::CREATED,
        Json(call_json(a, &call_id, &stored, Some(ttl))),
    )
        .into_response())
}

fn check_call_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(bad("call_id", format!("{id:?} is not a call ID")));
    }
    Ok(())
}

/// `GET /v1/calls/{call_id}`.
pub(super) async fn get_call(State(a): State<Admin>, Path(id): Path<String>) -> Response {
    if let Err(e) = check_call_id(&id) {
        return e.into_response();
    }
    match stored_call(&a, &id) {
        Some((stored, ttl_left)) => Json(call_json(&a, &id, &stored, ttl_left)).into_response(),
        None => error(StatusCode::NOT_FOUND, "call_id", format!("no call {id}")),
    }
}

/// `DELETE /v1/calls/{call_id}`: the URI stops routing (a call in progress
/// is not affected).
pub(super) async fn delete_call(State(a): State<Admin>, Path(id): Path<String>) -> Response {
    if let Err(e) = check_call_id(&id) {
        return e.into_response();
    }
    if a.services
        .registry
        .delete(&format!("call:{id}"), Instant::now())
    {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "call_id", format!("no call {id}"))
    }
}

fn check_number(n: &str) -> Result<(), ApiError> {
    if is_e164(n) {
        Ok(())
    } else {
        Err(bad(
            "number",
            format!("{n:?} is not an E.164 number (+ and 8 to 15 digits)"),
        ))
    }
}

fn number_json(number: &str, stored: &str) -> Value {
    let mut v =
        serde_json::from_str::<Value>(stored).unwrap_or_else(|_| json!({ "agent": stored }));
    if let Value::Object(m) = &mut v {
        m.insert("number".into(), json!(number));
    }
    v
}

/// `PUT /v1/numbers/{e164}`: `{"agent", "trunk"?}`.
pub(super) async fn put_number(
    State(a): State<Admin>,
    Path(n): Path<String>,
    body: Bytes,
) -> Response {
    let result = (|| {
        check_number(&n)?;
        let m = body_object(&body, r#"{"agent": "sales", "trunk": "twilio-us1"}"#)?;
        no_unknown(&m, &["agent", "trunk"])?;
        let agent = agent(&m)?;
        let mut entry = Map::new();
        entry.insert("agent".into(), json!(agent));
        if let Some(t) = opt_str(&m, "trunk")? {
            if t.is_empty()
                || t.len() > 64
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b))
            {
                return Err(bad(
                    "trunk",
                    format!("{t:?} is not a trunk name (letters, digits, - _ : .)"),
                ));
            }
            entry.insert("trunk".into(), json!(t));
        }
        let stored = Value::Object(entry).to_string();
        let key = format!("num:{n}");
        let existed = a.services.registry.get(&key, Instant::now()).is_some();
        a.services
            .registry
            .set(&key, &stored, Duration::ZERO, Instant::now())
            .map_err(|e| bad(e.field, e.message))?;
        let status = if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        Ok((status, Json(number_json(&n, &stored))).into_response())
    })();
    result.unwrap_or_else(|e: ApiError| e.into_response())
}

/// `GET /v1/numbers/{e164}`.
pub(super) async fn get_number(State(a): State<Admin>, Path(n): Path<String>) -> Response {
    if let Err(e) = check_number(&n) {
        return e.into_response();
    }
    match a.services.registry.get(&format!("num:{n}"), Instant::now()) {
        Some(stored) => Json(number_json(&n, &stored)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "number",
            format!("{n} is not imported"),
        ),
    }
}

/// `DELETE /v1/numbers/{e164}`.
pub(super) async fn delete_number(State(a): State<Admin>, Path(n): Path<String>) -> Response {
    if let Err(e) = check_number(&n) {
        return e.into_response();
    }
    if a.services
        .registry
        .delete(&format!("num:{n}"), Instant::now())
    {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            "number",
            format!("{n} is not imported"),
        )
    }
}

/// `GET /v1/numbers`: every imported number.
pub(super) async fn list_numbers(State(a): State<Admin>) -> Response {
    let list: Vec<Value> = a
        .services
        .registry
        .list("num:", super::MAX_LIST, Instant::now())
        .into_iter()
        .map(|e| number_json(e.key.trim_start_matches("num:"), &e.value))
        .collect();
    Json(json!({ "numbers": list })).into_response()
}
