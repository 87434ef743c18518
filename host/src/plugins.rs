//! The plugin folder: loading at start, hot reload on change, and the status the
//! admin API shows.
//!
//! A reload never makes things worse: a file is compiled, checked against the
//! world, instantiated and `init`-ed before its version replaces the serving one;
//! a file that fails leaves the previous version serving and records why. The
//! chain is published as an immutable [`PluginSet`] swapped in one store, so a
//! request sees either the old set or the new one, never a mix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use notify_debouncer_full::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use serde::Serialize;
use tracing::{info, warn};
use weir_plugin_host::{
    content_hash, ChainEntry, PluginSet, PluginVersion, Runtime, Services, SharedSet,
};

use crate::config::{valid_plugin_name, PluginsConfig};

/// How long the folder must be quiet before a change is acted on.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// What the admin API says about one plugin.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PluginStatus {
    pub name: String,
    /// `loaded`, `failed` (no version serves), `missing` (no file),
    /// `unloaded` (its file was removed) or `ignored` (not in the chain).
    pub state: &'static str,
    pub in_chain: bool,
    pub file: String,
    /// The serving version: a number that grows with every load.
    pub version: Option<u64>,
    /// SHA-256 of the serving file.
    pub hash: Option<String>,
    pub size: Option<usize>,
    pub world: Option<String>,
    pub imports: Vec<String>,
    pub loaded_at_unix: Option<u64>,
    /// Why the last attempt to load a file failed (the serving version, if any,
    /// is older).
    pub last_error: Option<String>,
    pub last_error_hash: Option<String>,
    pub loads: u64,
    pub load_failures: u64,
}

#[derive(Debug)]
struct Slot {
    status: PluginStatus,
    version: Option<Arc<PluginVersion>>,
}

/// The plugin folder and the chain built from it.
#[derive(Debug)]
pub struct PluginHost {
    runtime: Runtime,
    cfg: PluginsConfig,
    set: SharedSet,
    slots: Mutex<BTreeMap<String, Slot>>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl PluginHost {
    /// Checks the folder and loads what is in it. Failing plugins do not stop
    /// the start (their policy applies); a missing folder does.
    pub fn start(cfg: PluginsConfig, services: Arc<Services>) -> Result<Arc<PluginHost>, String> {
        if !cfg.dir.is_dir() {
            return Err(format!(
                "[plugins] dir: {} is not a folder (build the example plugins with scripts/build-plugins.sh, or fix the path)",
                cfg.dir.display()
            ));
        }
        let runtime = Runtime::new(cfg.limits, services)?;
        let host = Arc::new(PluginHost {
            runtime,
            cfg,
            set: Arc::new(ArcSwap::from_pointee(PluginSet::default())),
            slots: Mutex::new(BTreeMap::new()),
        });
        host.scan();
        Ok(host)
    }

    /// The snapshot workers route with.
    pub fn set(&self) -> SharedSet {
        self.set.clone()
    }

    /// Every plugin the folder or the chain names.
    pub fn status(&self) -> Vec<PluginStatus> {
        self.lock().values().map(|s| s.status.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn file_of(&self, name: &str) -> PathBuf {
        self.cfg.dir.join(format!("{name}.wasm"))
    }

    /// Plugin names with a file in the folder (hidden files are uploads in
    /// progress: write, then rename).
    fn files(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.cfg.dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let p = e.path();
                let stem = p.file_stem()?.to_str()?.to_string();
                (p.extension()? == "wasm" && !stem.starts_with('.') && valid_plugin_name(&stem))
                    .then_some(stem)
            })
            .collect();
        names.sort();
        names
    }

    /// Loads new and changed files, unloads removed ones, and publishes the chain
    /// if anything changed. Returns the names that failed to load this time.
    pub fn scan(&self) -> Vec<String> {
        let files = self.files();
        let chain: Vec<String> = if self.cfg.chain.is_empty() {
            files.clone()
        } else {
            self.cfg.chain.clone()
        };
        let mut failed = Vec::new();
        let mut changed = false;
        let mut slots = self.lock();
        let names: Vec<String> = chain
            .iter()
            .chain(files.iter())
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for name in names {
            let in_chain = chain.contains(&name);
            let path = self.file_of(&name);
            let slot = slots.entry(name.clone()).or_insert_with(|| Slot {
                status: PluginStatus {
                    name: name.clone(),
                    state: "missing",
                    in_chain,
                    file: path.display().to_string(),
                    version: None,
                    hash: None,
                    size: None,
                    world: None,
                    imports: Vec::new(),
                    loaded_at_unix: None,
                    last_error: None,
                    last_error_hash: None,
                    loads: 0,
                    load_failures: 0,
                },
                version: None,
            });
            if !in_chain {
                slot.status.state = "ignored";
                continue;
            }
            match std::fs::read(&path) {
                Err(_) => {
                    if slot.version.take().is_some() {
                        info!(plugin = %name, "plugin file removed: unloaded");
                        slot.status.state = "unloaded";
                        changed = true;
                    } else if slot.status.state != "unloaded" {
                        slot.status.state = "missing";
                    }
                    slot.status.version = None;
                    slot.status.hash = None;
                }
                Ok(bytes) => match self.load_into(slot, &name, &bytes) {
                    Some(true) => changed = true,
                    Some(false) => failed.push(name.clone()),
                    None => {}
                },
            }
        }
        let generation = self.set.load().generation + 1;
        // The first scan always publishes: a chain whose plugins all failed must
        // still apply their policies.
        if changed || generation == 1 {
            let entries = chain
                .iter()
                .map(|name| ChainEntry {
                    name: Arc::from(name.as_str()),
                    version: slots.get(name).and_then(|s| s.version.clone()),
                    on_error: self.cfg.settings(name).on_error,
                })
                .collect();
            self.set.store(Arc::new(PluginSet {
                generation,
                entries,
            }));
        }
        failed
    }

    /// Loads `bytes` into `slot` unless that exact file is what serves (or
    /// already failed): `Some(true)` when a new version now serves,
    /// `Some(false)` when it failed, `None` when nothing was tried.
    fn load_into(&self, slot: &mut Slot, name: &str, bytes: &[u8]) -> Option<bool> {
        let hash = content_hash(bytes);
        if slot.status.hash.as_deref() == Some(&hash)
            || slot.status.last_error_hash.as_deref() == Some(&hash)
        {
            return None;
        }
        let settings = self.cfg.settings(name);
        match self
            .runtime
            .load(name, bytes, &settings.config_json, settings.capabilities)
        {
            Ok(v) => {
                info!(plugin = %name, version = v.id, hash = %&v.hash[..12], size = v.size, "plugin loaded");
                let s = &mut slot.status;
                s.state = "loaded";
                s.version = Some(v.id);
                s.hash = Some(v.hash.clone());
                s.size = Some(v.size);
                s.world = Some(format!("weir:proxy@{}", v.world));
                s.imports = v.imports.clone();
                s.loaded_at_unix = Some(unix(v.loaded_at));
                s.last_error = None;
                s.last_error_hash = None;
                s.loads += 1;
                slot.version = Some(v);
                Some(true)
            }
            Err(e) => {
                let serving = if slot.version.is_some() {
                    "the previous version keeps serving"
                } else {
                    "no version serves: requests get its on_error policy"
                };
                warn!(plugin = %name, hash = %&hash[..12], "plugin file refused ({serving}): {e}");
                self.runtime.services().count(
                    &format!("weir_plugin_load_failures_total{{plugin=\"{name}\"}}"),
                    1,
                );
                let s = &mut slot.status;
                if slot.version.is_none() {
                    s.state = "failed";
                }
                s.last_error = Some(e.to_string());
                s.last_error_hash = Some(hash);
                s.load_failures += 1;
                Some(false)
            }
        }
    }

    /// Watches the folder; every quiet change triggers a [`PluginHost::scan`].
    /// Dropping the returned watcher stops it.
    pub fn watch(
        self: &Arc<PluginHost>,
    ) -> Result<Debouncer<RecommendedWatcher, RecommendedCache>, String> {
        let host = Arc::downgrade(self);
        let mut debouncer = new_debouncer(DEBOUNCE, None, move |res: DebounceEventResult| {
            if let Err(errors) = &res {
                for e in errors {
                    warn!("plugin folder watch: {e}");
                }
            }
            if let Some(h) = host.upgrade() {
                h.scan();
            }
        })
        .map_err(|e| format!("cannot watch the plugin folder: {e}"))?;
        debouncer
            .watch(&self.cfg.dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", self.cfg.dir.display()))?;
        Ok(debouncer)
    }

    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }
}
