//! The plugin chain as the proxy's router.
//!
//! A [`PluginSet`] is an immutable snapshot (the chain's order, each plugin's
//! loaded version and failure policy), swapped atomically by the loader. Each
//! worker owns a [`Chain`]: it reads the current snapshot once per request, keeps
//! one warm instance per plugin version, and pins the version that decided a
//! forward so that `on-failure` for that request runs on the same version.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Instant;

use arc_swap::ArcSwap;
use weir_sip::message::Message;
use weir_sip::proxy::{
    Decision, Failure, FailureAction, FallbackRouter, Flow, Pin, Rejection, Routed, Router,
};
use weir_sip::registrar;

use crate::bindings::weir::proxy::types;
use crate::decision::Verdict;
use crate::request::RequestRep;
use crate::runtime::{PluginVersion, Warm};
use crate::state::Services;

/// What happens to a request when its plugin fails (trap, deadline, bad answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Answer 500 with a reason naming the plugin.
    #[default]
    Reject,
    /// Ask the next plugin, then the fallback.
    Continue,
}

/// One place in the chain.
#[derive(Debug, Clone)]
pub struct ChainEntry {
    pub name: Arc<str>,
    /// None while no version of the plugin has loaded.
    pub version: Option<Arc<PluginVersion>>,
    pub on_error: OnError,
}

/// An immutable snapshot of the chain.
#[derive(Debug, Default)]
pub struct PluginSet {
    /// Bumped on every swap.
    pub generation: u64,
    pub entries: Vec<ChainEntry>,
}

/// The snapshot the loader publishes and the workers read.
pub type SharedSet = Arc<ArcSwap<PluginSet>>;

/// What a forward remembers for `on-failure`.
struct Pinned {
    version: Arc<PluginVersion>,
    on_error: OnError,
    source: Flow,
}

/// A worker's router over the shared plugin set.
pub struct Chain {
    set: SharedSet,
    /// The registrar `register` decisions act on.
    services: Arc<Services>,
    warm: HashMap<u64, (Weak<PluginVersion>, Warm)>,
    fallback: FallbackRouter,
    seen_generation: u64,
    calls: u64,
    /// Drops trapped instances off the request path: one may hold its whole
    /// memory cap, and giving that back takes milliseconds the request that
    /// trapped must not wait for (its answer is due within the deadline).
    reaper: Option<std::sync::mpsc::Sender<Warm>>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("warm", &self.warm.len())
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

impl Chain {
    pub fn new(set: SharedSet, services: Arc<Services>, fallback: FallbackRouter) -> Chain {
        Chain {
            set,
            services,
            warm: HashMap::new(),
            fallback,
            seen_generation: 0,
            calls: 0,
            reaper: None,
        }
    }

    /// Drops a poisoned instance on the reaper thread (started at the first
    /// trap), or here if it cannot be started.
    fn retire(&mut self, warm: Warm) {
        if self.reaper.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<Warm>();
            let started = std::thread::Builder::new()
                .name("plugin-reaper".into())
                .spawn(move || rx.into_iter().for_each(drop));
            if started.is_ok() {
                self.reaper = Some(tx);
            }
        }
        match &self.reaper {
            Some(tx) => {
                if let Err(back) = tx.send(warm) {
                    drop(back.0);
                }
            }
            None => drop(warm),
        }
    }

    /// Drops instances of versions nobody can call any more.
    fn sweep(&mut self, generation: u64) {
        self.calls += 1;
        if generation != self.seen_generation || self.calls % 256 == 0 {
            self.seen_generation = generation;
            self.warm.retain(|_, (v, _)| v.strong_count() > 0);
        }
    }

    fn instance(&mut self, v: &Arc<PluginVersion>) -> Result<&mut Warm, crate::CallError> {
        match self.warm.entry(v.id) {
            Entry::Occupied(e) => Ok(&mut e.into_mut().1),
            Entry::Vacant(e) => Ok(&mut e.insert((Arc::downgrade(v), v.instance()?)).1),
        }
    }

    /// `on-request` on `v`'s warm instance; a trap drops the instance.
    fn call_request(
        &mut self,
        v: &Arc<PluginVersion>,
        rep: RequestRep,
    ) -> (Option<RequestRep>, Result<Verdict, (String, bool)>) {
        let (rep, verdict) = match self.instance(v) {
            Ok(warm) => warm.decide(rep),
            Err(e) => (Some(rep), Err((e.to_string(), true))),
        };
        if matches!(verdict, Err((_, true))) {
            // A trap poisons the instance.
            if let Some((_, warm)) = self.warm.remove(&v.id) {
                self.retire(warm);
            }
        }
        (rep, verdict)
    }
}

/// Logs and counts a failed plugin call; true when its policy rejects the request.
fn plugin_failed(
    v: Option<&PluginVersion>,
    name: &str,
    why: &str,
    trapped: bool,
    policy: OnError,
) -> bool {
    tracing::warn!(plugin = name, policy = ?policy, "plugin failed: {why}");
    if let Some(v) = v {
        v.count_error(if trapped { "trap" } else { "invalid" });
    }
    policy == OnError::Reject
}

/// The reason phrase of the 500 a rejecting policy answers with.
fn rejection(name: &str) -> String {
    format!("Server Internal Error (plugin {name} failed)")
}

impl Router for Chain {
    fn route(&mut self, request: &Arc<Message>, from: &Flow, identity: Option<&str>) -> Routed {
        let set = self.set.load_full();
        self.sweep(set.generation);
        let identity = identity.map(str::to_string);
        let mut rep = RequestRep::new(request.clone(), *from, identity.clone());
        for entry in &set.entries {
            let Some(v) = &entry.version else {
                let why = "no version is loaded (see GET /v1/plugins)";
                if plugin_failed(None, &entry.name, why, false, entry.on_error) {
                    return reject(&entry.name);
                }
                continue;
            };
            let (back, verdict) = self.call_request(v, rep);
            // The table hands the request back even after a trap; only a full
            // table (impossible with one request at a time) would lose it.
            rep = back.unwrap_or_else(|| RequestRep::new(request.clone(), *from, identity.clone()));
            let verdict = match verdict {
                Ok(Verdict::Continue) => continue,
                Ok(verdict) => verdict,
                Err((why, trapped)) => {
                    if plugin_failed(Some(v), &entry.name, &why, trapped, entry.on_error) {
                        return reject(&entry.name);
                    }
                    continue;
                }
            };
            let edited = match rep.edited() {
                Ok(m) => m,
                Err(e) => {
                    let why = format!("its edits do not make a valid request: {e:?}");
                    if plugin_failed(Some(v), &entry.name, &why, false, entry.on_error) {
                        return reject(&entry.name);
                    }
                    continue;
                }
            };
            return match verdict {
                Verdict::Forward {
                    targets,
                    record_route,
                    media,
                } => Routed {
                    decision: Decision::Forward(targets),
                    edited,
                    record_route,
                    media,
                    reply_headers: Vec::new(),
                    pin: Some(Pin(Arc::new(Pinned {
                        version: v.clone(),
                        on_error: entry.on_error,
                        source: *from,
                    }))),
                },
                Verdict::Reply {
                    status,
                    reason,
                    headers,
                } => Routed {
                    decision: Decision::Reply { status, reason },
                    reply_headers: headers,
                    ..Decision::Drop.into()
                },
                Verdict::Challenge { realm } => Decision::Challenge { realm }.into(),
                Verdict::Register { aor } => self.register(request, from, aor.as_deref()),
                Verdict::Drop | Verdict::Continue => Decision::Drop.into(),
            };
        }
        // Nobody decided: the fallback, on the request as the chain edited it.
        match rep.edited() {
            Ok(Some(m)) => Routed {
                decision: self.fallback.decide(&m),
                edited: Some(m),
                ..Decision::Drop.into()
            },
            _ => self.fallback.decide(request).into(),
        }
    }

    fn on_failure(
        &mut self,
        pin: Option<&Pin>,
        request: &Message,
        failure: &Failure<'_>,
    ) -> FailureAction {
        let Some(pinned) = pin.and_then(|p| p.0.downcast_ref::<Pinned>()) else {
            return FailureAction::Proceed;
        };
        let v = pinned.version.clone();
        let rep = RequestRep::new(Arc::new(request.clone()), pinned.source, None);
        let f = types::Failure {
            status: failure.status,
            reason: String::from_utf8_lossy(failure.reason).into_owned(),
            target: failure.target.to_string(),
            remaining: failure.remaining.min(u32::MAX as usize) as u32,
        };
        let result = match self.instance(&v) {
            Ok(w) => w.decide_failure(rep, &f),
            Err(e) => Err((e.to_string(), true)),
        };
        match result {
            Ok(action) => action,
            Err((why, trapped)) => {
                if trapped {
                    if let Some((_, warm)) = self.warm.remove(&v.id) {
                        self.retire(warm);
                    }
                }
                if plugin_failed(Some(&v), &v.name, &why, trapped, pinned.on_error) {
                    FailureAction::Reply {
                        status: 500,
                        reason: rejection(&v.name),
                        headers: Vec::new(),
                    }
                } else {
                    FailureAction::Proceed
                }
            }
        }
    }
}

impl Chain {
    /// A `register` decision: the registrar's answer as the reply.
    fn register(&self, request: &Message, from: &Flow, aor: Option<&str>) -> Routed {
        let aor = match aor {
            Some(a) => registrar::aor_of(a),
            None => match request.to() {
                Some(Ok(to)) => registrar::aor_of(to.uri_text),
                _ => Err("the To header does not parse".to_string()),
            },
        };
        let result = match aor {
            Ok(aor) => self.services.registrar().register(
                Instant::now(),
                request,
                &aor,
                from.remote,
                from.transport,
            ),
            Err(e) => Err(Rejection::new(
                400,
                format!("Bad Request (no address-of-record: {e})"),
            )),
        };
        let (status, reason, headers) = match result {
            Ok(contacts) => (200, "OK".to_string(), contacts),
            Err(rej) => (rej.status, rej.reason.into_owned(), rej.headers),
        };
        Routed {
            reply_headers: headers,
            ..Decision::Reply { status, reason }.into()
        }
    }
}

fn reject(name: &str) -> Routed {
    Decision::Reply {
        status: 500,
        reason: rejection(name),
    }
    .into()
}
