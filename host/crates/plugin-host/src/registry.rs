//! The registry: a key/value store with time-to-live that maps call IDs and
//! numbers to agents. Plugins use it through the `registry` import, operators
//! through the admin API. [`Registry`] is the storage interface; [`MemoryRegistry`]
//! keeps everything in this process (a shared backend can implement the same trait).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest key accepted.
pub const MAX_KEY: usize = 512;
/// The longest value accepted.
pub const MAX_VALUE: usize = 8 * 1024;
/// The most entries kept; a full store refuses new keys.
pub const MAX_ENTRIES: usize = 1_000_000;

/// Why a write was refused; `field` names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RegistryError {
    pub field: &'static str,
    pub message: String,
}

impl RegistryError {
    fn new(field: &'static str, message: impl Into<String>) -> RegistryError {
        RegistryError {
            field,
            message: message.into(),
        }
    }
}

/// One entry as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// Seconds left before the entry expires; `None` when it never does.
    pub ttl_left_s: Option<u64>,
}

/// The storage interface.
pub trait Registry: Send + Sync + std::fmt::Debug {
    fn get(&self, key: &str, now: Instant) -> Option<String>;
    /// `ttl` of zero keeps the entry until deleted.
    fn set(&self, key: &str, value: &str, ttl: Duration, now: Instant)
        -> Result<(), RegistryError>;
    fn delete(&self, key: &str, now: Instant) -> bool;
    /// Live entries whose key starts with `prefix`, in key order, at most `limit`.
    fn list(&self, prefix: &str, limit: usize, now: Instant) -> Vec<Entry>;
    fn len(&self, now: Instant) -> usize;
    fn is_empty(&self, now: Instant) -> bool {
        self.len(now) == 0
    }
}

/// Checks a key and a value the way every backend must.
pub fn check_entry(key: &str, value: &str) -> Result<(), RegistryError> {
    if key.is_empty() {
        return Err(RegistryError::new("key", "must not be empty"));
    }
    if key.len() > MAX_KEY {
        return Err(RegistryError::new(
            "key",
            format!("is {} bytes; the limit is {MAX_KEY}", key.len()),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(RegistryError::new(
            "key",
            "must not contain control characters",
        ));
    }
    if value.is_empty() {
        return Err(RegistryError::new("value", "must not be empty"));
    }
    if value.len() > MAX_VALUE {
        return Err(RegistryError::new(
            "value",
            format!("is {} bytes; the limit is {MAX_VALUE}", value.len()),
        ));
    }
    Ok(())
}

#[derive(Debug)]
struct Stored {
    value: String,
    expires: Option<Instant>,
}

impl Stored {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

/// The in-process backend. Expired entries are invisible at once and removed
/// when touched or when a write finds the store full.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    entries: Mutex<BTreeMap<String, Stored>>,
}

impl MemoryRegistry {
    pub fn new() -> MemoryRegistry {
        MemoryRegistry::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Stored>> {
        // A panic while holding the lock cannot leave the map half-written (every
        // operation is one map call), so a poisoned lock is still good.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Registry for MemoryRegistry {
    fn get(&self, key: &str, now: Instant) -> Option<String> {
        let mut map = self.lock();
        match map.get(key) {
            Some(s) if s.live(now) => Some(s.value.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    fn set(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
        now: Instant,
    ) -> Result<(), RegistryError> {
        check_entry(key, value)?;
        let mut map = self.lock();
        if map.len() >= MAX_ENTRIES && !map.contains_key(key) {
            map.retain(|_, s| s.live(now));
            if map.len() >= MAX_ENTRIES {
                return Err(RegistryError::new(
                    "key",
                    format!("the registry is full ({MAX_ENTRIES} entries)"),
                ));
            }
        }
        let expires = (!ttl.is_zero()).then(|| now + ttl);
        map.insert(
            key.to_string(),
            Stored {
                value: value.to_string(),
                expires,
            },
        );
        Ok(())
    }

    fn delete(&self, key: &str, now: Instant) -> bool {
        self.lock().remove(key).is_some_and(|s| s.live(now))
    }

    fn list(&self, prefix: &str, limit: usize, now: Instant) -> Vec<Entry> {
        let map = self.lock();
        map.range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, s)| s.live(now))
            .take(limit)
            .map(|(k, s)| Entry {
                key: k.clone(),
                value: s.value.clone(),
                ttl_left_s: s
                    .expires
                    .map(|e| e.saturating_duration_since(now).as_secs_f64().ceil() as u64),
            })
            .collect()
    }

    fn len(&self, now: Instant) -> usize {
        self.lock().values().filter(|s| s.live(now)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_list_by_prefix() {
        let r = MemoryRegistry::new();
        let t0 = Instant::now();
        r.set("call:1", "agent-a", Duration::from_secs(10), t0)
            .expect("set");
        r.set("call:2", "agent-b", Duration::ZERO, t0).expect("set");
        r.set("num:+1415", "agent-c", Duration::from_secs(5), t0)
            .expect("set");
        assert_eq!(r.get("call:1", t0).as_deref(), Some("agent-a"));
        let listed = r.list("call:", 10, t0);
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].ttl_left_s, Some(10));
        assert_eq!(listed[1].ttl_left_s, None);
        let later = t0 + Duration::from_secs(11);
        assert_eq!(r.list("call:", 10, later).len(), 1);
        assert_eq!(r.get("call:1", later), None);
        assert_eq!(r.get("call:2", later).as_deref(), Some("agent-b"));
        assert!(r.delete("call:2", later));
        assert!(!r.delete("call:2", later));
        assert_eq!(r.len(later), 0);
    }

    #[test]
    fn bad_entries_name_the_field() {
        let r = MemoryRegistry::new();
        let now = Instant::now();
        assert_eq!(
            r.set("", "v", Duration::ZERO, now).map_err(|e| e.field),
            Err("key")
        );
        assert_eq!(
            r.set("k", "", Duration::ZERO, now).map_err(|e| e.field),
            Err("value")
        );
        let big = "x".repeat(MAX_VALUE + 1);
        assert_eq!(
            r.set("k", &big, Duration::ZERO, now).map_err(|e| e.field),
            Err("value")
        );
        assert_eq!(
            r.set("a\nb", "v", Duration::ZERO, now).map_err(|e| e.field),
            Err("key")
        );
    }
}
