//! Weir's WebAssembly plugin runtime.
//!
//! Plugins are components for the `weir:proxy/plugin` world (`wit/proxy.wit`).
//! [`Runtime::load`] compiles, checks and initialises one; [`Chain`] is the
//! proxy's [`weir_sip::proxy::Router`] over a swappable [`PluginSet`];
//! [`Registry`] is the call-ID-to-agent store plugins and operators share.
//!
//! Sandbox: each call runs under an epoch deadline (default 10 ms), each
//! instance under a memory cap (default 16 MiB) and, if configured, fuel. A
//! plugin sees only the world's imports and a locked-down slice of WASI
//! (see [`wasi`](crate::wasi)): no files, no sockets, no environment.

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../../wit",
        world: "weir:proxy/plugin",
        with: {
            "weir:proxy/types.request": crate::request::RequestRep,
        },
        imports: { default: trappable },
    });
}

mod chain;
mod decision;
pub mod registry;
mod request;
mod runtime;
mod state;
mod wasi;

pub use chain::{Chain, ChainEntry, OnError, PluginSet, SharedSet};
pub use decision::{standard_reason, MediaMode, Verdict};
pub use registry::{MemoryRegistry, Registry, RegistryError};
pub use request::{EditError, RequestRep};
pub use runtime::{
    content_hash, CallError, Inspection, Limits, LoadError, PluginVersion, Runtime, Warm, PACKAGE,
    WORLD_VERSIONS,
};
pub use state::{Capabilities, Services};
