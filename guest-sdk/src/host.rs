//! Host services: the registry, the registrar's bindings, the address lists,
//! logging, counters and the clock.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::bindings::weir::proxy::{acl, clock, location, log, metrics, registry};

/// Log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// The proxy's services, or a [`MockHost`] in native tests.
#[derive(Debug, Clone)]
pub struct Host {
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    Wasm,
    Mock(Rc<RefCell<MockState>>),
}

impl Host {
    pub(crate) fn wasm() -> Host {
        Host { inner: Inner::Wasm }
    }

    /// The registry value under `key` (needs the `registry` capability).
    pub fn registry_get(&self, key: &str) -> Option<String> {
        match &self.inner {
            Inner::Wasm => registry::get(key),
            Inner::Mock(m) => m.borrow().registry.get(key).map(|(v, _)| v.clone()),
        }
    }

    /// Stores `value` under `key` for `ttl_s` seconds (0: until deleted).
    pub fn registry_set(&self, key: &str, value: &str, ttl_s: u32) -> Result<(), String> {
        match &self.inner {
            Inner::Wasm => registry::set(key, value, ttl_s),
            Inner::Mock(m) => mock_set(&mut m.borrow_mut(), key, value, ttl_s),
        }
    }

    /// Removes `key`; true when it was there.
    pub fn registry_delete(&self, key: &str) -> bool {
        match &self.inner {
            Inner::Wasm => registry::delete(key),
            Inner::Mock(m) => m.borrow_mut().registry.remove(key).is_some(),
        }
    }

    /// The contact URIs registered for the address-of-record `aor`, best
    /// first (needs the `location` capability).
    pub fn contacts(&self, aor: &str) -> Vec<String> {
        match &self.inner {
            Inner::Wasm => location::contacts(aor),
            Inner::Mock(m) => m.borrow().contacts.get(aor).cloned().unwrap_or_default(),
        }
    }

    /// Whether `ip` is in the proxy's `[acl]` list `name`; an error names an
    /// unknown list or an address that does not parse.
    pub fn acl_contains(&self, name: &str, ip: &str) -> Result<bool, String> {
        match &self.inner {
            Inner::Wasm => acl::contains(name, ip),
            Inner::Mock(m) => {
                let m = m.borrow();
                let list = m
                    .acls
                    .get(name)
                    .ok_or_else(|| format!("no [acl] list is named {name:?}"))?;
                Ok(list.iter().any(|a| a == ip))
            }
        }
    }

    /// A line in the proxy's log, tagged with the plugin's name.
    pub fn log(&self, level: Level, message: &str) {
        match &self.inner {
            Inner::Wasm => log::log(
                match level {
                    Level::Trace => log::Level::Trace,
                    Level::Debug => log::Level::Debug,
                    Level::Info => log::Level::Info,
                    Level::Warn => log::Level::Warn,
                    Level::Error => log::Level::Error,
                },
                message,
            ),
            Inner::Mock(m) => m.borrow_mut().logs.push((level, message.to_string())),
        }
    }

    /// Adds `delta` to the counter `name` (letters, digits and `_`).
    pub fn count(&self, name: &str, delta: u64) {
        match &self.inner {
            Inner::Wasm => metrics::counter_add(name, delta),
            Inner::Mock(m) => {
                *m.borrow_mut().counters.entry(name.to_string()).or_default() += delta
            }
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_unix_ms(&self) -> u64 {
        match &self.inner {
            Inner::Wasm => clock::now_unix_ms(),
            Inner::Mock(m) => m.borrow().now_ms,
        }
    }
}

#[derive(Debug, Default)]
struct MockState {
    registry: BTreeMap<String, (String, u32)>,
    contacts: BTreeMap<String, Vec<String>>,
    acls: BTreeMap<String, Vec<String>>,
    logs: Vec<(Level, String)>,
    counters: BTreeMap<String, u64>,
    now_ms: u64,
}

fn mock_set(m: &mut MockState, key: &str, value: &str, ttl_s: u32) -> Result<(), String> {
    if key.is_empty() {
        return Err("key: must not be empty".into());
    }
    if value.is_empty() {
        return Err("value: must not be empty".into());
    }
    m.registry
        .insert(key.to_string(), (value.to_string(), ttl_s));
    Ok(())
}

/// A stand-in for the proxy in native unit tests: an in-memory registry, a log
/// and counters you can inspect, and a clock you set.
#[derive(Debug, Clone, Default)]
pub struct MockHost {
    state: Rc<RefCell<MockState>>,
}

impl MockHost {
    pub fn new() -> MockHost {
        MockHost::default()
    }

    /// The [`Host`] to hand to the plugin.
    pub fn host(&self) -> Host {
        Host {
            inner: Inner::Mock(self.state.clone()),
        }
    }

    pub fn registry_set(&self, key: &str, value: &str, ttl_s: u32) -> Result<(), String> {
        mock_set(&mut self.state.borrow_mut(), key, value, ttl_s)
    }

    pub fn registry_get(&self, key: &str) -> Option<String> {
        self.state
            .borrow()
            .registry
            .get(key)
            .map(|(v, _)| v.clone())
    }

    /// Registers `contacts` for `aor` (as [`Host::contacts`] will list them).
    pub fn set_contacts(&self, aor: &str, contacts: &[&str]) {
        self.state.borrow_mut().contacts.insert(
            aor.to_string(),
            contacts.iter().map(|c| c.to_string()).collect(),
        );
    }

    /// Defines the `[acl]` list `name` as these exact addresses.
    pub fn set_acl(&self, name: &str, addresses: &[&str]) {
        self.state.borrow_mut().acls.insert(
            name.to_string(),
            addresses.iter().map(|a| a.to_string()).collect(),
        );
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.state.borrow().logs.clone()
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.state.borrow().counters.get(name).copied().unwrap_or(0)
    }

    pub fn set_now_unix_ms(&self, ms: u64) {
        self.state.borrow_mut().now_ms = ms;
    }
}
