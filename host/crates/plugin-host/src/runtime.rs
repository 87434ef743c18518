//! Loading plugins and calling them.
//!
//! Compiling is slow (tens of milliseconds) and happens off the hot path, once per
//! content hash. Each load is checked against the world before it can serve:
//! compiled, its imports and exports matched against `weir:proxy@0.2.0` and its
//! capabilities, instantiated, and `init`-ed. The instance that passed `init` is
//! kept as the first warm instance. Calls run under an epoch deadline, a memory
//! cap and, if configured, fuel; a trap poisons the instance, which is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, Resource};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};

use weir_sip::message::Method;

use crate::bindings::weir::proxy::types;
use crate::bindings::{Plugin, PluginPre};
use weir_sip::proxy::FailureAction;

use crate::decision::{check_decision, check_failure_decision, Verdict};
use crate::request::RequestRep;
use crate::state::{Capabilities, Services, State};

/// The contract versions this host accepts.
pub const WORLD_VERSIONS: &[&str] = &["0.2.0"];
/// The package plugins import and export.
pub const PACKAGE: &str = "weir:proxy";

/// How often the deadline clock ticks while plugin code runs.
const TICK: Duration = Duration::from_millis(1);

/// …and while none does: an idle proxy is not woken a thousand times a
/// second. (Code that runs without being counted in [`Clock::busy`] is still
/// interrupted, this much later.)
const IDLE_TICK: Duration = Duration::from_millis(50);

/// The deadline clock's thread, and how many plugin calls it is timing.
#[derive(Debug, Default)]
struct Clock {
    busy: AtomicUsize,
    thread: std::sync::OnceLock<thread::Thread>,
}

impl Clock {
    /// Plugin code runs until the guard drops: the ticker ticks every
    /// [`TICK`] meanwhile.
    fn busy(&self) -> Busy<'_> {
        if self.busy.fetch_add(1, Ordering::AcqRel) == 0 {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
        Busy(self)
    }
}

struct Busy<'a>(&'a Clock);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Deadlines are only as punctual as the ticker's wake-ups. A plugin stuck in
/// a loop keeps a core busy, and at normal priority the scheduler may let the
/// waking ticker wait several milliseconds for it (seen under load on two
/// cores: 15.9 ms for a 10 ms deadline). A higher priority (nice -10) lets it
/// preempt at once; without the privilege to raise it, it stays as it is.
fn raise_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), -10) {
        tracing::debug!("plugin deadline ticker keeps normal priority: {e}");
    }
}
/// `init` may parse a large configuration: it gets longer than a request.
const INIT_DEADLINE: Duration = Duration::from_secs(1);

/// Sandbox limits, the same for every plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock budget of one call.
    pub deadline: Duration,
    /// Linear memory per instance.
    pub memory: usize,
    /// Instructions (roughly) per call, when set.
    pub fuel: Option<u64>,
    /// Instances alive at once (all plugins, versions and workers).
    pub instances: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            deadline: Duration::from_millis(10),
            memory: 16 << 20,
            fuel: None,
            instances: 128,
        }
    }
}

/// Why a plugin file did not load. The previous version, if any, keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("not a WebAssembly component: {0}")]
    Compile(String),
    #[error("not a Weir plugin: {0}")]
    NotAPlugin(String),
    #[error("built for {PACKAGE}@{found}, but this host accepts {PACKAGE}@{accepted}; rebuild it against a matching weir-sdk")]
    Version { found: String, accepted: String },
    #[error(
        "imports {PACKAGE}/{0}, which its capabilities do not grant (add \"{0}\" to capabilities)"
    )]
    Capability(String),
    #[error("imports {0}, which plugins cannot have (no files, sockets or other host access)")]
    Import(String),
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
    #[error("init refused the configuration: {0}")]
    Init(String),
    #[error("init trapped: {0}")]
    InitTrap(String),
}

/// Why a call did not produce a decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("ran past its {0:?} deadline")]
    Deadline(Duration),
    #[error("ran out of fuel")]
    Fuel,
    #[error("trapped: {0}")]
    Trap(String),
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
}

/// The runtime: one engine, the compile cache and the deadline clock.
#[derive(Debug, Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    limits: Limits,
    services: Arc<Services>,
    /// Compiled components by content hash (the engine and its settings are
    /// fixed for the process, so the hash is the whole key).
    cache: Mutex<HashMap<[u8; 32], Component>>,
    next_id: AtomicU64,
    stop: Arc<AtomicBool>,
    clock: Arc<Clock>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    pub fn new(limits: Limits, services: Arc<Services>) -> Result<Runtime, String> {
        let mut pool = PoolingAllocationConfig::default();
        let n = limits.instances.max(2);
        pool.total_component_instances(n)
            .total_core_instances(n * 16)
            .total_memories(n * 2)
            .total_tables(n * 4)
            .max_core_instances_per_component(32)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            .max_memory_size(limits.memory);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(limits.fuel.is_some())
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if std::env::var_os("WEIR_WASM_PERFMAP").is_some() {
            // For `perf`: names compiled plugin functions in /tmp/perf-PID.map.
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| format!("wasm engine: {e:#}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = engine.clone();
        let stopped = stop.clone();
        let clock = Arc::new(Clock::default());
        let timing = clock.clone();
        let handle = thread::Builder::new()
            .name("plugin-deadline".into())
            .spawn(move || {
                raise_priority();
                // Ticks follow the wall clock, not the number of sleeps: a loaded
                // machine oversleeps, and the deadline must not stretch with it.
                // (A burst of ticks after an idle wait interrupts nothing
                // early: the deadline callback reads the call's own clock.)
                let start = std::time::Instant::now();
                let mut ticked: u128 = 0;
                while !stopped.load(Ordering::Relaxed) {
                    if timing.busy.load(Ordering::Acquire) == 0 {
                        thread::park_timeout(IDLE_TICK);
                    } else {
                        thread::sleep(TICK);
                    }
                    let due = start.elapsed().as_micros() / TICK.as_micros();
                    while ticked < due {
                        ticker.increment_epoch();
                        ticked += 1;
                    }
                }
            })
            .map_err(|e| format!("deadline clock thread: {e}"))?;
        let _ = clock.thread.set(handle.thread().clone());
        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                limits,
                services,
                cache: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                stop,
                clock,
            }),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub fn services(&self) -> &Arc<Services> {
        &self.inner.services
    }

    /// Compiles (or finds in the cache), checks, instantiates and `init`s a plugin.
    pub fn load(
        &self,
        name: &str,
        bytes: &[u8],
        config_json: &str,
        caps: Capabilities,
    ) -> Result<Arc<PluginVersion>, LoadError> {
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        let component = self.compile(&hash, bytes)?;
        let shape = inspect(&self.inner.engine, &component, caps)?;
        let mut linker: Linker<State> = Linker::new(&self.inner.engine);
        Plugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        let unknown =
            crate::wasi::add_to_linker(&mut linker, shape.wasi.iter().map(String::as_str))
                .map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        if let Some(u) = unknown.first() {
            return Err(LoadError::Import(u.clone()));
        }
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        let pre = PluginPre::new(pre).map_err(|e| LoadError::NotAPlugin(format!("{e:#}")))?;
        let version = Arc::new(PluginVersion {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            name: Arc::from(name),
            hash: hex(&hash),
            size: bytes.len(),
            world: shape.version,
            imports: shape.imports,
            caps,
            config_json: config_json.to_string(),
            pre,
            runtime: self.clone(),
            loaded_at: SystemTime::now(),
            prewarmed: Mutex::new(None),
        });
        let warm = version
            .instantiate_uninit()
            .map_err(|e| LoadError::Instantiate(e.to_string()))?;
        let warm = warm.init()?;
        *version.prewarmed.lock().unwrap_or_else(|p| p.into_inner()) = Some(warm);
        Ok(version)
    }

    /// What a file is, without running it: the contract version it was built
    /// for, what it imports and exports. Fails as `load` would before `init`.
    pub fn inspect(&self, bytes: &[u8]) -> Result<Inspection, LoadError> {
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        let component = self.compile(&hash, bytes)?;
        let mut all = Capabilities::none();
        for c in Capabilities::NAMES {
            all.grant(c);
        }
        let shape = inspect(&self.inner.engine, &component, all)?;
        let exports = component
            .component_type()
            .exports(&self.inner.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        Ok(Inspection {
            world: shape.version,
            imports: shape.imports,
            exports,
            hash: hex(&hash),
            size: bytes.len(),
        })
    }

    fn compile(&self, hash: &[u8; 32], bytes: &[u8]) -> Result<Component, LoadError> {
        if let Some(c) = self
            .inner
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
        {
            return Ok(c.clone());
        }
        if bytes.starts_with(b"\0asm") && bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            return Err(LoadError::NotAPlugin(
                "this is a core WebAssembly module; plugins are components (build for wasm32-wasip2)"
                    .into(),
            ));
        }
        let c = Component::new(&self.inner.engine, bytes)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= 64 {
            cache.clear();
        }
        cache.insert(*hash, c.clone());
        Ok(c)
    }
}

/// What [`Runtime::inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The contract version (`0.2.0`).
    pub world: String,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// SHA-256, hex.
    pub hash: String,
    pub size: usize,
}

/// What a component imports and exports, checked against the world.
struct Shape {
    version: String,
    /// Every import, by name.
    imports: Vec<String>,
    /// The WASI interfaces among them.
    wasi: Vec<String>,
}

fn inspect(engine: &Engine, component: &Component, caps: Capabilities) -> Result<Shape, LoadError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let handler = exports
        .iter()
        .find_map(|e| e.strip_prefix("weir:proxy/handler@"))
        .ok_or_else(|| {
            LoadError::NotAPlugin(format!(
                "it exports no {PACKAGE}/handler (exports: {})",
                if exports.is_empty() {
                    "none".to_string()
                } else {
                    exports.join(", ")
                }
            ))
        })?;
    let version = handler.to_string();
    if !WORLD_VERSIONS.contains(&version.as_str()) {
        return Err(LoadError::Version {
            found: version,
            accepted: WORLD_VERSIONS.join(", "),
        });
    }
    let mut imports = Vec::new();
    let mut wasi = Vec::new();
    for (name, _) in ty.imports(engine) {
        imports.push(name.to_string());
        if let Some(rest) = name.strip_prefix("weir:proxy/") {
            let (interface, v) = rest.split_once('@').unwrap_or((rest, ""));
            if v != version {
                return Err(LoadError::Version {
                    found: v.to_string(),
                    accepted: WORLD_VERSIONS.join(", "),
                });
            }
            if !caps.allows(interface) {
                return Err(LoadError::Capability(interface.to_string()));
            }
        } else if name.starts_with("wasi:") {
            wasi.push(name.to_string());
        } else {
            return Err(LoadError::Import(name.to_string()));
        }
    }
    Ok(Shape {
        version,
        imports,
        wasi,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A plugin file's identity: SHA-256 of its bytes, hex (as [`PluginVersion::hash`]).
pub fn content_hash(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// One loaded version of a plugin: immutable, shared by every worker.
pub struct PluginVersion {
    /// Unique in this process; a new load of the same file gets a new id.
    pub id: u64,
    pub name: Arc<str>,
    /// SHA-256 of the file, hex.
    pub hash: String,
    pub size: usize,
    /// The contract version it was built for.
    pub world: String,
    /// The interfaces it imports.
    pub imports: Vec<String>,
    pub caps: Capabilities,
    pub config_json: String,
    pub loaded_at: SystemTime,
    pre: PluginPre<State>,
    runtime: Runtime,
    /// The instance that ran `init` at load, for the first worker that asks.
    prewarmed: Mutex<Option<Warm>>,
}

impl std::fmt::Debug for PluginVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginVersion")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl PluginVersion {
    /// Counts a failed call of this plugin.
    pub fn count_error(&self, kind: &str) {
        self.runtime.services().count(
            &format!(
                "weir_plugin_errors_total{{plugin=\"{}\",kind=\"{kind}\"}}",
                self.name
            ),
            1,
        );
    }

    /// A ready instance: the one from load if nobody took it, else a new one.
    pub fn instance(&self) -> Result<Warm, CallError> {
        if let Some(w) = self
            .prewarmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            return Ok(w);
        }
        self.instantiate_uninit()?
            .init()
            .map_err(|e| CallError::Instantiate(e.to_string()))
    }

    fn instantiate_uninit(&self) -> Result<Uninit, CallError> {
        let limits = self.runtime.limits();
        let state = State::new(
            self.name.clone(),
            self.caps,
            self.runtime.services().clone(),
            limits.memory,
        );
        let mut store = Store::new(&self.runtime.inner.engine, state);
        store.limiter(|s| &mut s.limits);
        // Ticks only say "look at the clock": the call is interrupted when its
        // own wall-clock budget is spent, however the ticks were bunched.
        store.epoch_deadline_callback(|ctx| {
            let s = ctx.data();
            let spent = s.call_started.elapsed();
            if spent >= s.budget {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Continue(ticks(s.budget - spent)))
            }
        });
        store.data_mut().start_call(INIT_DEADLINE);
        store.set_epoch_deadline(ticks(INIT_DEADLINE));
        if let Some(f) = limits.fuel {
            store
                .set_fuel(f.saturating_mul(100))
                .map_err(|e| CallError::Instantiate(format!("{e:#}")))?;
        }
        let clock = self.runtime.inner.clock.clone();
        let busy = clock.busy();
        let plugin = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| CallError::Instantiate(format!("{e:#}")))?;
        drop(busy);
        Ok(Uninit {
            clock,
            store,
            plugin,
            config: self.config_json.clone(),
            limits: *limits,
        })
    }
}

struct Uninit {
    clock: Arc<Clock>,
    store: Store<State>,
    plugin: Plugin,
    config: String,
    limits: Limits,
}

impl Uninit {
    fn init(mut self) -> Result<Warm, LoadError> {
        let busy = self.clock.busy();
        let r = self
            .plugin
            .weir_proxy_handler()
            .call_init(&mut self.store, &self.config);
        drop(busy);
        self.store.data_mut().flush_output(2);
        match r {
            Ok(Ok(())) => Ok(Warm {
                clock: self.clock,
                store: self.store,
                plugin: self.plugin,
                limits: self.limits,
            }),
            Ok(Err(e)) => Err(LoadError::Init(e)),
            Err(e) => Err(LoadError::InitTrap(describe_trap(&e, INIT_DEADLINE))),
        }
    }
}

/// An instance ready for calls. After an `Err` it is poisoned: drop it.
pub struct Warm {
    clock: Arc<Clock>,
    store: Store<State>,
    plugin: Plugin,
    limits: Limits,
}

impl std::fmt::Debug for Warm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warm")
            .field("plugin", &self.store.data().plugin)
            .finish_non_exhaustive()
    }
}

impl Warm {
    fn arm(&mut self) -> Result<(), CallError> {
        self.store.data_mut().start_call(self.limits.deadline);
        self.store.set_epoch_deadline(ticks(self.limits.deadline));
        if let Some(f) = self.limits.fuel {
            self.store
                .set_fuel(f)
                .map_err(|e| CallError::Trap(format!("{e:#}")))?;
        }
        Ok(())
    }

    fn lend(&mut self, rep: RequestRep) -> Result<Resource<RequestRep>, CallError> {
        self.store
            .data_mut()
            .table
            .push(rep)
            .map_err(|e| CallError::Trap(format!("{e:#}")))
    }

    fn take_back(&mut self, res: Resource<RequestRep>) -> Option<RequestRep> {
        self.store.data_mut().table.delete(res).ok()
    }

    /// Lends `rep` to the plugin for one export call under the deadline. The
    /// request comes back (with the plugin's edits) whatever happened.
    fn call<R>(
        &mut self,
        rep: RequestRep,
        export: impl FnOnce(&Plugin, &mut Store<State>, Resource<RequestRep>) -> wasmtime::Result<R>,
    ) -> (Option<RequestRep>, Result<R, CallError>) {
        if let Err(e) = self.arm() {
            return (Some(rep), Err(e));
        }
        let res = match self.lend(rep) {
            Ok(r) => r,
            Err(e) => return (None, Err(e)),
        };
        let clock = self.clock.clone();
        let busy = clock.busy();
        let r = export(
            &self.plugin,
            &mut self.store,
            Resource::new_borrow(res.rep()),
        );
        drop(busy);
        self.store.data_mut().flush_output(2);
        let rep = self.take_back(res);
        let deadline = self.limits.deadline;
        (rep, r.map_err(|e| classify(&e, deadline)))
    }

    /// Calls `on-request` and checks the answer; `Err((why, trapped))` when
    /// there is no usable decision (after a trap, drop this instance).
    pub fn decide(
        &mut self,
        rep: RequestRep,
    ) -> (Option<RequestRep>, Result<Verdict, (String, bool)>) {
        let method = rep.message().method().unwrap_or(Method::Extension);
        let (rep, r) = self.call(rep, |p, store, req| {
            p.weir_proxy_handler().call_on_request(store, req)
        });
        let verdict = match r {
            Ok(d) => check_decision(d, method)
                .map_err(|e| (format!("returned an invalid decision: {e}"), false)),
            Err(e) => Err((e.to_string(), true)),
        };
        (rep, verdict)
    }

    /// Calls `on-failure` and checks the answer, as [`Warm::decide`] does.
    pub(crate) fn decide_failure(
        &mut self,
        rep: RequestRep,
        failure: &types::Failure,
    ) -> Result<FailureAction, (String, bool)> {
        let (_, r) = self.call(rep, |p, store, req| {
            p.weir_proxy_handler().call_on_failure(store, req, failure)
        });
        match r {
            Ok(d) => check_failure_decision(d)
                .map_err(|e| (format!("returned an invalid failure decision: {e}"), false)),
            Err(e) => Err((e.to_string(), true)),
        }
    }
}

fn ticks(d: Duration) -> u64 {
    (d.as_micros().div_ceil(TICK.as_micros())).max(1) as u64
}

fn classify(e: &wasmtime::Error, deadline: Duration) -> CallError {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Deadline(deadline),
        Some(Trap::OutOfFuel) => CallError::Fuel,
        _ => CallError::Trap(describe_trap(e, deadline)),
    }
}

fn describe_trap(e: &wasmtime::Error, deadline: Duration) -> String {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => format!("ran past its {deadline:?} deadline"),
        Some(Trap::OutOfFuel) => "ran out of fuel".into(),
        Some(Trap::UnreachableCodeReached) => {
            "panicked or aborted (unreachable; an allocation over the memory cap ends this way too)"
                .into()
        }
        Some(t) => t.to_string(),
        None => {
            // The first line of a wasmtime error is its cause; the backtrace
            // that follows is for developers.
            format!("{e}")
        }
    }
}
