//! `/v1/users`: digest users provisioned while running, beside the
//! `[[digest.users]]` of the configuration. Kept as H(A1) in a store only the
//! host reads (not the registry plugins can read: an H(A1) is as good as the
//! password for its realm); never returned by the API, never logged.
//! Configured users are listed but belong to the file: the API neither
//! replaces nor removes them.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use weir_sip::digest::Algorithm;
use weir_sip::proxy::StoredUser;

use super::calls::{bad, body_object, no_unknown, opt_str};
use super::{api_error, error, Admin, ApiError};

fn algorithm_names(user: &StoredUser) -> Vec<&'static str> {
    user.algorithms()
        .into_iter()
        .map(|a| match a {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        })
        .collect()
}

fn user_json(realm: &str, username: &str, user: &StoredUser, source: &str) -> Value {
    json!({
        "realm": realm,
        "username": username,
        "algorithms": algorithm_names(user),
        "source": source,
    })
}

/// A realm or username: one line, no quotes or backslashes (they go into a
/// quoted string of the challenge and the answer), at most 128 bytes.
fn check_name(field: &str, v: &str) -> Result<(), ApiError> {
    if v.is_empty() || v.len() > 128 || v.chars().any(|c| c.is_control() || c == '"' || c == '\\') {
        return Err(bad(
            field,
            "must be 1 to 128 characters without quotes, backslashes or control characters",
        ));
    }
    Ok(())
}

fn hex_of(
    m: &serde_json::Map<String, Value>,
    field: &str,
    len: usize,
) -> Result<Option<String>, ApiError> {
    match opt_str(m, field)? {
        None => Ok(None),
        Some(h) if h.len() == len && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(Some(h.to_ascii_lowercase()))
        }
        Some(_) => Err(bad(field, format!("must be {len} hexadecimal digits"))),
    }
}

pub(super) async fn put_user(
    State(a): State<Admin>,
    Path((realm, username)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let result = (|| {
        check_name("realm", &realm)?;
        check_name("username", &username)?;
        let key = (realm.clone(), username.clone());
        if a.configured_users.contains(&key) {
            return Err(api_error(
                StatusCode::CONFLICT,
                "username",
                "this user is configured in [[digest.users]]: change it there",
            ));
        }
        let m = body_object(
            &body,
            r#"{"password": "..."} or {"ha1_md5": "...", "ha1_sha256": "..."}"#,
        )?;
        no_unknown(&m, &["password", "ha1_md5", "ha1_sha256"])?;
        let password = opt_str(&m, "password")?;
        let md5 = hex_of(&m, "ha1_md5", 32)?;
        let sha256 = hex_of(&m, "ha1_sha256", 64)?;
        let user = match (password, md5.is_some() || sha256.is_some()) {
            (Some(""), _) => return Err(bad("password", "must not be empty")),
            (Some(p), false) => StoredUser::from_password(&realm, &username, p),
            (None, true) => StoredUser::from_ha1(md5, sha256),
            (Some(_), true) => {
                return Err(bad("password", "give a password or H(A1) values, not both"))
            }
            (None, false) => return Err(bad("password", "is required (or ha1_md5 / ha1_sha256)")),
        };
        let body = user_json(&realm, &username, &user, "api");
        let mut users = a.users.write().unwrap_or_else(|p| p.into_inner());
        let existed = users.insert(key, user).is_some();
        let status = if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        Ok((status, Json(body)).into_response())
    })();
    result.unwrap_or_else(|e: ApiError| e.into_response())
}

pub(super) async fn get_user(
    State(a): State<Admin>,
    Path((realm, username)): Path<(String, String)>,
) -> Response {
    let key = (realm, username);
    if a.configured_users.contains(&key) {
        return Json(json!({"realm": key.0, "username": key.1, "source": "config"}))
            .into_response();
    }
    let users = a.users.read().unwrap_or_else(|p| p.into_inner());
    match users.get(&key) {
        Some(u) => Json(user_json(&key.0, &key.1, u, "api")).into_response(),
        None => error(StatusCode::NOT_FOUND, "username", "no such user"),
    }
}

pub(super) async fn delete_user(
    State(a): State<Admin>,
    Path((realm, username)): Path<(String, String)>,
) -> Response {
    let key = (realm, username);
    if a.configured_users.contains(&key) {
        return error(
            StatusCode::CONFLICT,
            "username",
            "this user is configured in [[digest.users]]: remove it there",
        );
    }
    let removed = a
        .users
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&key)
        .is_some();
    if removed {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "username", "no such user")
    }
}

pub(super) async fn list_users(State(a): State<Admin>) -> Response {
    let mut list: Vec<Value> = a
        .configured_users
        .iter()
        .map(|(r, u)| json!({"realm": r, "username": u, "source": "config"}))
        .collect();
    let users = a.users.read().unwrap_or_else(|p| p.into_inner());
    let mut provisioned: Vec<_> = users.iter().collect();
    provisioned.sort_by(|x, y| x.0.cmp(y.0));
    list.extend(
        provisioned
            .into_iter()
            .map(|((r, n), u)| user_json(r, n, u, "api")),
    );
    Json(json!({ "users": list })).into_response()
}
