//! The admin HTTP API on `[admin] listen`:
//!
//! | method and path | what |
//! |---|---|
//! | `GET /healthz` | liveness, with the number of plugins serving |
//! | `GET /v1/plugins` | each plugin: version, hash, state, last error |
//! | `PUT /v1/registry/{key}` | `{"value": "...", "ttl_s": 300}` (ttl optional: forever) |
//! | `GET /v1/registry/{key}` | the entry, or 404 |
//! | `DELETE /v1/registry/{key}` | 204, or 404 |
//! | `GET /v1/registry?prefix=P&limit=N` | entries whose key starts with P |
//! | `GET /v1/registrations` | every address-of-record and its contacts |
//! | `GET /v1/registrations/{aor}` | one address-of-record's contacts, or 404 |
//! | `DELETE /v1/registrations/{aor}` | removes its bindings: 204, or 404 |
//! | `PUT /v1/users/{realm}/{username}` | `{"password"}` or `{"ha1_md5"?, "ha1_sha256"?}`: a digest user, kept as H(A1) |
//! | `GET /v1/users`, `GET/DELETE /v1/users/{realm}/{username}` | digest users (never their secrets) |
//! | `GET /v1/upstream-registrations` | this proxy's own registrations with carriers (`[[registrations]]`): state, seconds left, last answer |
//! | `POST /v1/calls` | registers a call: `{"agent", "from"?, "to"?, "direction"?, "metadata"?, "ttl_s"?}` (+ `Idempotency-Key`) → `{call_id, sip_uri, …}` |
//! | `GET /v1/calls/{id}` | the call, or 404 |
//! | `DELETE /v1/calls/{id}` | 204, or 404 |
//! | `PUT /v1/numbers/{e164}` | `{"agent", "trunk"?}`: imports a number |
//! | `GET /v1/numbers/{e164}` | the number, or 404; `GET /v1/numbers` lists them |
//! | `DELETE /v1/numbers/{e164}` | 204, or 404 |
//! | `GET /v1/media?limit=N` | relayed calls, oldest first: per stream each party's address, relay port, packets, bytes, loss, jitter, DTMF |
//! | `GET /v1/media/{call_id}` | the relayed dialogs of one SIP Call-ID, or 404 |
//! | `GET /metrics` | counters in the Prometheus text format |
//!
//! Errors are JSON, `{"error": "...", "field": "..."}`, naming the field at fault.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use weir_plugin_host::Services;

use crate::plugins::PluginHost;

mod calls;
mod users;

/// The longest time-to-live accepted: a year.
const MAX_TTL_S: u64 = 366 * 24 * 3600;
/// The most entries one listing returns.
const MAX_LIST: usize = 10_000;

#[derive(Debug, Clone)]
pub struct Admin {
    pub services: Arc<Services>,
    pub plugins: Option<Arc<PluginHost>>,
    /// `host[:port]` of the SIP URIs handed out for registered calls.
    pub sip_host: String,
    /// The proxy core's counters, published by its loop.
    pub proxy_stats: crate::runtime::SharedStats,
    /// Digest users provisioned through `/v1/users` (the proxy core reads them).
    pub users: weir_sip::proxy::ProvisionedUsers,
    /// (realm, username) of the `[[digest.users]]`: listed, not changeable here.
    pub configured_users: std::collections::BTreeSet<(String, String)>,
}

/// An API error: the status and the field at fault.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    field: String,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.message, "field": self.field })),
        )
            .into_response()
    }
}

fn api_error(status: StatusCode, field: &str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        field: field.to_string(),
        message: message.into(),
    }
}

fn error(status: StatusCode, field: &str, message: impl Into<String>) -> Response {
    api_error(status, field, message).into_response()
}

/// Binds and serves until the process ends.
pub async fn serve(addr: SocketAddr, admin: Admin) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("[admin] listen: cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, "admin API listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(admin)).await {
            tracing::error!("admin API stopped: {e}");
        }
    });
    Ok(())
}

pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/plugins", get(plugins))
        .route("/v1/registry", get(list))
        .route(
            "/v1/registry/{key}",
            get(get_entry).put(put_entry).delete(delete_entry),
        )
        .route("/v1/calls", post(calls::create_call))
        .route(
            "/v1/calls/{id}",
            get(calls::get_call).delete(calls::delete_call),
        )
        .route("/v1/numbers", get(calls::list_numbers))
        .route(
            "/v1/numbers/{number}",
            get(calls::get_number)
                .put(calls::put_number)
                .delete(calls::delete_number),
        )
        .route("/v1/media", get(media_calls))
        .route("/v1/media/{call_id}", get(media_call))
        .route("/v1/registrations", get(registrations))
        .route("/v1/upstream-registrations", get(upstream_registrations))
        .route("/v1/users", get(users::list_users))
        .route(
            "/v1/users/{realm}/{username}",
            get(users::get_user)
                .put(users::put_user)
                .delete(users::delete_user),
        )
        .route(
            "/v1/registrations/{aor}",
            get(get_registration).delete(delete_registration),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "path", "no such endpoint") })
        .with_state(admin)
}

async fn healthz(State(a): State<Admin>) -> Response {
    let serving = a.plugins.as_ref().map_or(0, |p| {
        p.status().iter().filter(|s| s.version.is_some()).count()
    });
    Json(json!({ "status": "ok", "plugins_serving": serving })).into_response()
}

fn bindings_json(services: &Services, aor: &str, now: Instant) -> Value {
    let contacts: Vec<Value> = services
        .registrar()
        .contacts(now, aor)
        .into_iter()
        .map(|b| {
            json!({
                "uri": b.uri,
                "expires_in_s": b.expires_in(now),
                "q": b.q.map(|q| f64::from(q) / 1000.0),
                "source": b.source.to_string(),
                "transport": b.transport.param(),
                "call_id": b.call_id,
                "cseq": b.cseq,
            })
        })
        .collect();
    json!({ "aor": aor, "contacts": contacts })
}

/// This proxy's own registrations with upstream registrars, as last published
/// by the proxy loop (about once a second).
async fn upstream_registrations(State(a): State<Admin>) -> Response {
    let list: Vec<Value> = a
        .proxy_stats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .registrations
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "aor": r.aor,
                "registrar": r.registrar,
                "state": r.state,
                "expires_in": r.expires_in,
                "last_answer": r.last_answer,
                "failures": r.failures,
            })
        })
        .collect();
    Json(json!({ "registrations": list })).into_response()
}

/// The relay, or the API error saying it is off.
fn relay(a: &Admin) -> Result<crate::media::Relay, ApiError> {
    let published = a.proxy_stats.lock().unwrap_or_else(|p| p.into_inner());
    published.relay.clone().ok_or_else(|| {
        api_error(
            StatusCode::NOT_FOUND,
            "media",
            "the media relay is off ([media] mode = \"off\", or no address to advertise)",
        )
    })
}

#[derive(Debug, Deserialize)]
struct MediaQuery {
    limit: Option<String>,
}

async fn media_calls(State(a): State<Admin>, Query(q): Query<MediaQuery>) -> Response {
    let (relay, limit) = match (relay(&a), limit_param(q.limit.as_deref(), 1000)) {
        (Ok(r), Ok(n)) => (r, n),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let calls: Vec<Value> = relay
        .calls(None, limit)
        .iter()
        .map(crate::media::CallReport::to_json)
        .collect();
    Json(json!({ "calls": calls })).into_response()
}

async fn media_call(State(a): State<Admin>, Path(call_id): Path<String>) -> Response {
    let relay = match relay(&a) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let calls: Vec<Value> = relay
        .calls(Some(&call_id), MAX_LIST)
        .iter()
        .map(crate::media::CallReport::to_json)
        .collect();
    if calls.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            "call_id",
            format!("no relayed call has Call-ID {call_id}"),
        );
    }
    Json(json!({ "calls": calls })).into_response()
}

async fn registrations(State(a): State<Admin>) -> Response {
    let now = Instant::now();
    let aors: Vec<String> = a
        .services
        .registrar()
        .aors(now)
        .into_iter()
        .take(MAX_LIST)
        .map(str::to_string)
        .collect();
    let list: Vec<Value> = aors
        .iter()
        .map(|aor| bindings_json(&a.services, aor, now))
        .collect();
    Json(json!({ "registrations": list })).into_response()
}

fn aor_param(aor: &str) -> Result<String, ApiError> {
    weir_sip::registrar::aor_of(aor).map_err(|e| api_error(StatusCode::BAD_REQUEST, "aor", e))
}

async fn get_registration(State(a): State<Admin>, Path(aor): Path<String>) -> Response {
    let aor = match aor_param(&aor) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let now = Instant::now();
    let v = bindings_json(&a.services, &aor, now);
    if v["contacts"].as_array().is_some_and(|c| c.is_empty()) {
        return error(
            StatusCode::NOT_FOUND,
            "aor",
            format!("{aor} has no bindings"),
        );
    }
    Json(v).into_response()
}

async fn delete_registration(State(a): State<Admin>, Path(aor): Path<String>) -> Response {
    let aor = match aor_param(&aor) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    if a.services.registrar().remove(&aor) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            "aor",
            format!("{aor} has no bindings"),
        )
    }
}

async fn plugins(State(a): State<Admin>) -> Response {
    match &a.plugins {
        Some(p) => Json(json!({ "dir": p.dir().display().to_string(), "plugins": p.status() }))
            .into_response(),
        None => Json(json!({ "dir": null, "plugins": [] })).into_response(),
    }
}

async fn metrics(State(a): State<Admin>) -> Response {
    let mut out = String::new();
    out.push_str("# TYPE weir_registry_entries gauge\n");
    out.push_str(&format!(
        "weir_registry_entries {}\n",
        a.services.registry.len(Instant::now())
    ));
    let (st, upstream, media) = {
        let published = a.proxy_stats.lock().unwrap_or_else(|p| p.into_inner());
        (
            published.stats.clone(),
            published.registrations.clone(),
            published.media,
        )
    };
    if !upstream.is_empty() {
        out.push_str("# HELP weir_upstream_registered 1 while the registrar holds the binding\n");
        out.push_str("# TYPE weir_upstream_registered gauge\n");
        for r in &upstream {
            out.push_str(&format!(
                "weir_upstream_registered{{name={:?}}} {}\n",
                r.name,
                u8::from(r.state == "registered")
            ));
        }
    }
    let counters: [(&str, &str, u64); 17] = [
        ("requests_in", "requests received", st.requests_in),
        ("responses_in", "responses received", st.responses_in),
        (
            "dropped_malformed",
            "messages dropped as unreadable",
            st.dropped_malformed,
        ),
        (
            "rejected",
            "invalid requests answered with an error",
            st.rejected,
        ),
        (
            "refused_sources",
            "requests refused by [sip] accept_from",
            st.refused_sources,
        ),
        (
            "retransmissions_absorbed",
            "retransmissions absorbed",
            st.retransmissions_absorbed,
        ),
        (
            "forwarded_requests",
            "requests forwarded",
            st.forwarded_requests,
        ),
        (
            "forwarded_responses",
            "responses forwarded",
            st.forwarded_responses,
        ),
        (
            "stray_responses_forwarded",
            "responses without a transaction forwarded",
            st.stray_responses_forwarded,
        ),
        (
            "stray_responses_dropped",
            "responses without a transaction dropped",
            st.stray_responses_dropped,
        ),
        (
            "failovers",
            "targets tried after another failed",
            st.failovers,
        ),
        (
            "loops_detected",
            "requests refused as loops",
            st.loops_detected,
        ),
        (
            "challenges_answered",
            "next hops' 401/407 answered with a credential",
            st.challenges_answered,
        ),
        (
            "challenges_sent",
            "401/407 sent to callers",
            st.challenges_sent,
        ),
        (
            "callers_verified",
            "callers' digest answers verified",
            st.callers_verified,
        ),
        (
            "caller_auth_failures",
            "wrong digest answers from callers",
            st.caller_auth_failures,
        ),
        (
            "refused_banned",
            "requests dropped from banned sources",
            st.refused_banned,
        ),
    ];
    push_counters(&mut out, "weir_sip", &counters);
    let gauges: [(&str, usize); 4] = [
        ("server_transactions", st.live_server_transactions),
        ("client_transactions", st.live_client_transactions),
        ("contexts", st.live_contexts),
        ("shifted_dialogs", st.shifted_dialogs),
    ];
    for (name, value) in gauges {
        out.push_str(&format!(
            "# TYPE weir_sip_{name} gauge\nweir_sip_{name} {value}\n"
        ));
    }
    out.push_str(&format!(
        "# HELP weir_media_timeouts_total relayed calls ended because their media stopped\n# TYPE weir_media_timeouts_total counter\nweir_media_timeouts_total {}\n",
        st.media_timeouts
    ));
    if let Some(m) = media {
        let counters: [(&str, &str, u64); 8] = [
            ("packets", "RTP/RTCP packets relayed", m.packets),
            ("bytes", "RTP/RTCP bytes relayed", m.bytes),
            (
                "dropped_source",
                "packets dropped: not from the latched source",
                m.dropped_source,
            ),
            ("malformed", "packets dropped: not RTP or RTCP", m.malformed),
            (
                "send_errors",
                "packets the relay could not send",
                m.send_errors,
            ),
            (
                "srtp_refused",
                "SRTP/SRTCP packets that failed authentication or were replayed",
                m.srtp_refused,
            ),
            (
                "packets_lost",
                "RTP packets lost before the relay (by sequence numbers), in calls that ended",
                m.lost,
            ),
            (
                "payload_types_mapped",
                "RTP packets renumbered to the receiver's payload type, in calls that ended",
                m.payload_types_mapped,
            ),
        ];
        push_counters(&mut out, "weir_media", &counters);
        out.push_str(&format!(
            "# TYPE weir_media_sessions gauge\nweir_media_sessions {}\n# TYPE weir_media_ports_in_use gauge\nweir_media_ports_in_use {}\n",
            m.sessions, m.ports_in_use
        ));
    }
    for (series, value) in a.services.counters() {
        out.push_str(&format!("{series} {value}\n"));
    }
    if let Some(p) = &a.plugins {
        for s in p.status() {
            out.push_str(&format!(
                "weir_plugin_serving{{plugin=\"{}\"}} {}\n",
                s.name,
                u8::from(s.version.is_some())
            ));
        }
    }
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}

/// `PREFIX_NAME_total` counters with their help lines (Prometheus text).
fn push_counters(out: &mut String, prefix: &str, counters: &[(&str, &str, u64)]) {
    for (name, help, value) in counters {
        out.push_str(&format!(
            "# HELP {prefix}_{name}_total {help}\n# TYPE {prefix}_{name}_total counter\n{prefix}_{name}_total {value}\n"
        ));
    }
}

fn check_key(key: &str) -> Result<(), ApiError> {
    weir_plugin_host::registry::check_entry(key, "x")
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, e.field, e.message))
}

async fn get_entry(State(a): State<Admin>, Path(key): Path<String>) -> Response {
    if let Err(e) = check_key(&key) {
        return e.into_response();
    }
    let now = Instant::now();
    match a
        .services
        .registry
        .list(&key, 1, now)
        .into_iter()
        .find(|e| e.key == key)
    {
        Some(e) => Json(json!({ "key": e.key, "value": e.value, "ttl_left_s": e.ttl_left_s }))
            .into_response(),
        None => error(StatusCode::NOT_FOUND, "key", format!("no entry {key:?}")),
    }
}

async fn put_entry(State(a): State<Admin>, Path(key): Path<String>, body: Bytes) -> Response {
    if let Err(e) = check_key(&key) {
        return e.into_response();
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "body",
                format!("not JSON: {e} (expected {{\"value\": \"...\", \"ttl_s\": 300}})"),
            )
        }
    };
    let Value::Object(obj) = v else {
        return error(StatusCode::BAD_REQUEST, "body", "expected a JSON object");
    };
    let (value, ttl) = match entry_fields(&obj) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    match a
        .services
        .registry
        .set(&key, &value, Duration::from_secs(ttl), Instant::now())
    {
        Ok(()) => Json(json!({ "key": key, "value": value, "ttl_s": ttl })).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e.field, e.message),
    }
}

fn entry_fields(obj: &Map<String, Value>) -> Result<(String, u64), ApiError> {
    if let Some(k) = obj.keys().find(|k| *k != "value" && *k != "ttl_s") {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            k,
            "unknown field (known: value, ttl_s)",
        ));
    }
    let value = match obj.get("value") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                "value",
                format!("must be a string, not {other}"),
            ))
        }
        None => return Err(api_error(StatusCode::BAD_REQUEST, "value", "is required")),
    };
    let ttl = match obj.get("ttl_s") {
        None | Some(Value::Null) => 0,
        Some(t) => match t.as_u64() {
            Some(n) if n <= MAX_TTL_S => n,
            _ => {
                return Err(api_error(
                    StatusCode::BAD_REQUEST,
                    "ttl_s",
                    format!(
                    "must be a whole number of seconds, 0..={MAX_TTL_S} (0: no expiry), not {t}"
                ),
                ))
            }
        },
    };
    Ok((value, ttl))
}

async fn delete_entry(State(a): State<Admin>, Path(key): Path<String>) -> Response {
    if let Err(e) = check_key(&key) {
        return e.into_response();
    }
    if a.services.registry.delete(&key, Instant::now()) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "key", format!("no entry {key:?}"))
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    prefix: Option<String>,
    limit: Option<String>,
}

/// A listing's `limit` query parameter: 1..=MAX_LIST, `default` when absent.
fn limit_param(limit: Option<&str>, default: usize) -> Result<usize, ApiError> {
    match limit.map(str::parse::<usize>) {
        None => Ok(default),
        Some(Ok(n)) if (1..=MAX_LIST).contains(&n) => Ok(n),
        Some(_) => Err(api_error(
            StatusCode::BAD_REQUEST,
            "limit",
            format!("must be a number 1..={MAX_LIST}"),
        )),
    }
}

async fn list(State(a): State<Admin>, Query(q): Query<ListQuery>) -> Response {
    let limit = match limit_param(q.limit.as_deref(), 1000) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    let entries: Vec<Value> = a
        .services
        .registry
        .list(q.prefix.as_deref().unwrap_or(""), limit, Instant::now())
        .into_iter()
        .map(|e| json!({ "key": e.key, "value": e.value, "ttl_left_s": e.ttl_left_s }))
        .collect();
    Json(json!({ "entries": entries })).into_response()
}
