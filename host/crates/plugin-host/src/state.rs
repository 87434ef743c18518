//! What a plugin's store holds, and the host side of every import.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{Result, StoreLimits};

use ipnet::IpNet;
use weir_sip::registrar::{self, Registrar, RegistrarSettings};

use crate::bindings::weir::proxy::{acl, clock, location, log, metrics, registry, types};
use crate::registry::Registry;
use crate::request::{EditError, RequestRep};

/// What a plugin may import. Checked when it loads (a plugin importing what it
/// is not granted is refused) and again on every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub registry: bool,
    pub location: bool,
    pub acl: bool,
    pub log: bool,
    pub metrics: bool,
    pub clock: bool,
}

impl Default for Capabilities {
    /// Everything but the registry and the registrar's bindings: call routing
    /// state and who is registered are granted by name.
    fn default() -> Capabilities {
        Capabilities {
            registry: false,
            location: false,
            acl: true,
            log: true,
            metrics: true,
            clock: true,
        }
    }
}

impl Capabilities {
    pub const NAMES: [&'static str; 6] = ["registry", "location", "acl", "log", "metrics", "clock"];

    pub fn none() -> Capabilities {
        Capabilities {
            registry: false,
            location: false,
            acl: false,
            log: false,
            metrics: false,
            clock: false,
        }
    }

    /// Grants one by name; false for an unknown name.
    pub fn grant(&mut self, name: &str) -> bool {
        match name {
            "registry" => self.registry = true,
            "location" => self.location = true,
            "acl" => self.acl = true,
            "log" => self.log = true,
            "metrics" => self.metrics = true,
            "clock" => self.clock = true,
            _ => return false,
        }
        true
    }

    /// Whether the interface `weir:proxy/NAME` may be imported.
    pub fn allows(&self, interface: &str) -> bool {
        match interface {
            "registry" => self.registry,
            "location" => self.location,
            "acl" => self.acl,
            "log" => self.log,
            "metrics" => self.metrics,
            "clock" => self.clock,
            _ => true,
        }
    }
}

/// Host services shared by every plugin: the registry, the registrar's
/// bindings, the named address lists and the counters.
#[derive(Debug)]
pub struct Services {
    pub registry: Arc<dyn Registry>,
    /// Bindings made by `register` decisions (read by plugins through
    /// `location`, by operators through the admin API).
    pub location: Mutex<Registrar>,
    acls: BTreeMap<String, Vec<IpNet>>,
    counters: Mutex<BTreeMap<String, u64>>,
}

impl Services {
    pub fn new(registry: Arc<dyn Registry>) -> Services {
        Services {
            registry,
            location: Mutex::new(Registrar::new(RegistrarSettings::default())),
            acls: BTreeMap::new(),
            counters: Mutex::new(BTreeMap::new()),
        }
    }

    /// With the registrar's limits.
    pub fn with_registrar(mut self, settings: RegistrarSettings) -> Services {
        self.location = Mutex::new(Registrar::new(settings));
        self
    }

    /// With the `[acl]` lists plugins may test addresses against.
    pub fn with_acls(mut self, acls: BTreeMap<String, Vec<IpNet>>) -> Services {
        self.acls = acls;
        self
    }

    /// The registrar, locked (a panic elsewhere does not lose the bindings).
    pub fn registrar(&self) -> std::sync::MutexGuard<'_, Registrar> {
        self.location.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Contact URIs registered for `aor` (any SIP URI naming it), best first.
    pub fn contacts(&self, aor: &str) -> Vec<String> {
        let Ok(aor) = registrar::aor_of(aor) else {
            return Vec::new();
        };
        self.registrar()
            .contacts(Instant::now(), &aor)
            .into_iter()
            .map(|b| b.uri.clone())
            .collect()
    }

    /// Whether `ip` is in the `[acl]` list `name`.
    pub fn acl_contains(&self, name: &str, ip: &str) -> std::result::Result<bool, String> {
        let list = self
            .acls
            .get(name)
            .ok_or_else(|| format!("no [acl] list is named {name:?}"))?;
        let ip: std::net::IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("{ip:?} is not an IP address"))?;
        let ip = ip.to_canonical();
        Ok(list.iter().any(|n| n.contains(&ip)))
    }

    /// Adds to a counter; `name` is a whole Prometheus series (`name{labels}`).
    pub fn count(&self, name: &str, delta: u64) {
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        match c.get_mut(name) {
            Some(v) => *v = v.saturating_add(delta),
            None => {
                if c.len() < 10_000 {
                    c.insert(name.to_string(), delta);
                }
            }
        }
    }

    /// Every counter, by name.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A plugin instance's store data.
pub(crate) struct State {
    pub(crate) table: ResourceTable,
    pub(crate) limits: StoreLimits,
    pub(crate) plugin: Arc<str>,
    pub(crate) caps: Capabilities,
    pub(crate) services: Arc<Services>,
    started: Instant,
    /// When the current call began, and how long it may run.
    pub(crate) call_started: Instant,
    pub(crate) budget: Duration,
    /// Output not yet logged (up to a line break).
    pending: Vec<u8>,
}

const MAX_LINE: usize = 4096;

impl State {
    pub(crate) fn new(
        plugin: Arc<str>,
        caps: Capabilities,
        services: Arc<Services>,
        memory: usize,
    ) -> State {
        State {
            table: ResourceTable::new(),
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(memory)
                .instances(64)
                .tables(64)
                .memories(8)
                .build(),
            plugin,
            caps,
            services,
            started: Instant::now(),
            call_started: Instant::now(),
            budget: Duration::from_millis(10),
            pending: Vec::new(),
        }
    }

    pub(crate) fn start_call(&mut self, budget: Duration) {
        self.call_started = Instant::now();
        self.budget = budget;
    }

    pub(crate) fn since_start(&self) -> Duration {
        self.started.elapsed()
    }

    /// stdout/stderr of the plugin: logged line by line under its name.
    pub(crate) fn output(&mut self, stream: u32, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' || self.pending.len() >= MAX_LINE {
                self.flush_output(stream);
            } else {
                self.pending.push(b);
            }
        }
    }

    pub(crate) fn flush_output(&mut self, stream: u32) {
        if self.pending.is_empty() {
            return;
        }
        let line = String::from_utf8_lossy(&self.pending);
        let name = if stream == 1 { "stdout" } else { "stderr" };
        tracing::warn!(plugin = %self.plugin, stream = name, "{line}");
        self.pending.clear();
    }

    fn req(&self, r: &Resource<RequestRep>) -> Result<&RequestRep> {
        Ok(self.table.get(r)?)
    }

    fn req_mut(&mut self, r: &Resource<RequestRep>) -> Result<&mut RequestRep> {
        Ok(self.table.get_mut(r)?)
    }
}

fn wit_edit(r: Result<(), EditError>) -> std::result::Result<(), types::EditError> {
    r.map_err(edit_error)
}

fn edit_error(e: EditError) -> types::EditError {
    match e {
        EditError::Guarded(h) => types::EditError::Guarded(h),
        EditError::Invalid(m) => types::EditError::Invalid(m),
    }
}

impl types::Host for State {}

impl types::HostRequest for State {
    fn view(&mut self, r: Resource<RequestRep>) -> Result<types::RequestView> {
        Ok(self.req(&r)?.view())
    }
    fn method(&mut self, r: Resource<RequestRep>) -> Result<String> {
        Ok(self.req(&r)?.method())
    }
    fn request_uri(&mut self, r: Resource<RequestRep>) -> Result<String> {
        Ok(self.req(&r)?.request_uri())
    }
    fn request_user(&mut self, r: Resource<RequestRep>) -> Result<Option<String>> {
        Ok(self.req(&r)?.request_user())
    }
    fn call_id(&mut self, r: Resource<RequestRep>) -> Result<String> {
        Ok(self.req(&r)?.call_id())
    }
    fn from_uri(&mut self, r: Resource<RequestRep>) -> Result<String> {
        Ok(self.req(&r)?.from_uri())
    }
    fn from_user(&mut self, r: Resource<RequestRep>) -> Result<Option<String>> {
        Ok(self.req(&r)?.from_user())
    }
    fn to_uri(&mut self, r: Resource<RequestRep>) -> Result<String> {
        Ok(self.req(&r)?.to_uri())
    }
    fn to_user(&mut self, r: Resource<RequestRep>) -> Result<Option<String>> {
        Ok(self.req(&r)?.to_user())
    }
    fn header(&mut self, r: Resource<RequestRep>, name: String) -> Result<Option<String>> {
        Ok(self.req(&r)?.header(&name))
    }
    fn header_all(&mut self, r: Resource<RequestRep>, name: String) -> Result<Vec<String>> {
        Ok(self.req(&r)?.header_all(&name))
    }
    fn headers_raw(&mut self, r: Resource<RequestRep>) -> Result<String> {
        Ok(self.req(&r)?.headers_raw())
    }
    fn body(&mut self, r: Resource<RequestRep>) -> Result<Vec<u8>> {
        Ok(self.req(&r)?.body())
    }
    fn source(&mut self, r: Resource<RequestRep>) -> Result<types::Peer> {
        let s = &self.req(&r)?.source;
        Ok(types::Peer {
            ip: s.remote.ip().to_string(),
            port: s.remote.port(),
            transport: crate::request::transport_of(s.transport),
        })
    }
    fn identity(&mut self, r: Resource<RequestRep>) -> Result<Option<String>> {
        Ok(self.req(&r)?.identity.clone())
    }
    fn set_request_uri(
        &mut self,
        r: Resource<RequestRep>,
        uri: String,
    ) -> Result<std::result::Result<(), types::EditError>> {
        Ok(wit_edit(self.req_mut(&r)?.set_request_uri(&uri)))
    }
    fn set_header(
        &mut self,
        r: Resource<RequestRep>,
        name: String,
        value: String,
    ) -> Result<std::result::Result<(), types::EditError>> {
        Ok(wit_edit(self.req_mut(&r)?.set_header(&name, &value)))
    }
    fn append_header(
        &mut self,
        r: Resource<RequestRep>,
        name: String,
        value: String,
    ) -> Result<std::result::Result<(), types::EditError>> {
        Ok(wit_edit(self.req_mut(&r)?.append_header(&name, &value)))
    }
    fn remove_header(
        &mut self,
        r: Resource<RequestRep>,
        name: String,
    ) -> Result<std::result::Result<u32, types::EditError>> {
        Ok(self.req_mut(&r)?.remove_header(&name).map_err(edit_error))
    }
    fn set_from_user(
        &mut self,
        r: Resource<RequestRep>,
        user: String,
    ) -> Result<std::result::Result<(), types::EditError>> {
        Ok(wit_edit(self.req_mut(&r)?.set_from_user(&user)))
    }
    fn set_from_display(
        &mut self,
        r: Resource<RequestRep>,
        display: Option<String>,
    ) -> Result<std::result::Result<(), types::EditError>> {
        Ok(wit_edit(
            self.req_mut(&r)?.set_from_display(display.as_deref()),
        ))
    }
    fn drop(&mut self, _r: Resource<RequestRep>) -> Result<()> {
        // The host owns requests: it takes them back out of the table itself.
        Ok(())
    }
}

impl registry::Host for State {
    fn get(&mut self, key: String) -> Result<Option<String>> {
        if !self.caps.registry {
            return Ok(None);
        }
        Ok(self.services.registry.get(&key, Instant::now()))
    }
    fn set(
        &mut self,
        key: String,
        value: String,
        ttl_s: u32,
    ) -> Result<std::result::Result<(), String>> {
        if !self.caps.registry {
            return Ok(Err("the registry capability is not granted".into()));
        }
        Ok(self
            .services
            .registry
            .set(
                &key,
                &value,
                Duration::from_secs(ttl_s.into()),
                Instant::now(),
            )
            .map_err(|e| e.to_string()))
    }
    fn delete(&mut self, key: String) -> Result<bool> {
        if !self.caps.registry {
            return Ok(false);
        }
        Ok(self.services.registry.delete(&key, Instant::now()))
    }
}

impl location::Host for State {
    fn contacts(&mut self, aor: String) -> Result<Vec<String>> {
        if !self.caps.location {
            return Ok(Vec::new());
        }
        Ok(self.services.contacts(&aor))
    }
}

impl acl::Host for State {
    fn contains(&mut self, name: String, ip: String) -> Result<std::result::Result<bool, String>> {
        if !self.caps.acl {
            return Ok(Err("the acl capability is not granted".into()));
        }
        Ok(self.services.acl_contains(&name, &ip))
    }
}

impl log::Host for State {
    fn log(&mut self, level: log::Level, message: String) -> Result<()> {
        if !self.caps.log {
            return Ok(());
        }
        let plugin = &*self.plugin;
        match level {
            log::Level::Trace => tracing::trace!(plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
        Ok(())
    }
}

impl metrics::Host for State {
    fn counter_add(&mut self, name: String, delta: u64) -> Result<()> {
        if !self.caps.metrics
            || name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Ok(());
        }
        let full = format!(
            "weir_plugin_counter_total{{plugin=\"{}\",name=\"{name}\"}}",
            self.plugin
        );
        self.services.count(&full, delta);
        Ok(())
    }
}

impl clock::Host for State {
    fn now_unix_ms(&mut self) -> Result<u64> {
        if !self.caps.clock {
            return Ok(0);
        }
        Ok(SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64))
    }
}
