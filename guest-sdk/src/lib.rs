//! # weir-sdk: routing plugins for Weir
//!
//! A Weir plugin is a Rust library compiled to a WebAssembly component. The proxy
//! asks it about every *initial* request (INVITE, REGISTER, OPTIONS, MESSAGE…;
//! in-dialog requests follow the route set without it) and, when a forwarded
//! request fails, whether to try elsewhere.
//!
//! ## A plugin in five minutes
//!
//! ```toml
//! # Cargo.toml
//! [lib]
//! crate-type = ["cdylib", "rlib"]
//!
//! [dependencies]
//! weir-sdk = "0.1"
//! ```
//!
//! ```
//! use weir_sdk::{export_plugin, Config, Decision, Forward, Host, Plugin, Reply, Request};
//!
//! pub struct Router {
//!     fallback: String,
//! }
//!
//! impl Plugin for Router {
//!     fn init(config: &Config, _host: &Host) -> Result<Self, String> {
//!         Ok(Router {
//!             fallback: config.str_or("fallback", "sip:voicemail@10.0.0.9")?,
//!         })
//!     }
//!
//!     fn on_request(&mut self, req: &Request, host: &Host) -> Decision {
//!         let Some(user) = req.request_user() else {
//!             return Reply::new(404).into();
//!         };
//!         match host.registry_get(&format!("agent:{user}")) {
//!             Some(uri) => Forward::to(uri).then(&self.fallback).into(),
//!             None => Reply::new(480).reason("Agent Offline").into(),
//!         }
//!     }
//! }
//!
//! export_plugin!(Router);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release` and copy
//! `target/wasm32-wasip2/release/NAME.wasm` into the proxy's plugin folder
//! (`[plugins] dir`). The next request uses it; calls in progress finish on the
//! version they started with. `weir plugin check NAME.wasm` tells what the proxy
//! will think of the file before you drop it in.
//!
//! ## What a plugin can do
//!
//! - Read the request through [`Request`]: method, Request-URI, From/To users,
//!   any header, the raw header block, the body, where it came from.
//! - Edit it: [`Request::set_request_uri`], [`Request::set_header`],
//!   [`Request::append_header`], [`Request::remove_header`],
//!   [`Request::set_from_user`] (caller-ID), [`Request::set_from_display`]. The
//!   headers the proxy owns (Via, CSeq, Call-ID, Route, Record-Route,
//!   Content-Length, Max-Forwards, From, To) are refused with
//!   [`EditError::Guarded`].
//! - Decide with a [`Decision`]: [`Forward`] to targets tried in order, a
//!   [`Reply`], a digest challenge, drop, or [`Decision::Continue`] to let the
//!   next plugin of the chain decide.
//! - Use the host through [`Host`]: the registry (a key/value store with TTL
//!   that the admin API also writes), log lines, counters, the clock. Each is a
//!   capability the operator grants per plugin (`capabilities = [...]`).
//!
//! ## Limits
//!
//! Every call has a deadline (10 ms by default) and every instance a memory cap
//! (16 MiB by default). A panic, a trap or a blown deadline costs that one
//! request a clean error (500, or the next plugin, as the operator chose) and a
//! fresh instance for the next. There are no files, sockets or environment
//! variables; `println!`/`eprintln!` go to the proxy's log under the plugin's
//! name.
//!
//! ## Testing natively
//!
//! Generated WebAssembly imports abort when called outside the proxy, so this
//! crate puts them behind [`Host`] and [`Request`], which also have mock forms:
//! [`MockHost`] and [`Request::mock`]. Unit tests run with plain `cargo test`:
//!
//! ```
//! # use weir_sdk::*;
//! # struct Router;
//! # impl Plugin for Router {
//! #     fn init(_: &Config, _: &Host) -> Result<Self, String> { Ok(Router) }
//! #     fn on_request(&mut self, req: &Request, host: &Host) -> Decision {
//! #         match host.registry_get("agent:alice") { Some(u) => Forward::to(u).into(), None => Reply::new(480).into() }
//! #     }
//! # }
//! let mock = MockHost::new();
//! mock.registry_set("agent:alice", "sip:alice@10.0.0.5", 0).unwrap();
//! let host = mock.host();
//! let mut plugin = Router::init(&Config::parse("{}").unwrap(), &host).unwrap();
//! let req = Request::mock("INVITE sip:alice@weir.example.com SIP/2.0\r\n\
//!     From: <sip:bob@example.com>;tag=1\r\nTo: <sip:alice@weir.example.com>\r\n\
//!     Call-ID: 1@h\r\nCSeq: 1 INVITE\r\n\r\n").unwrap();
//! let decision = plugin.on_request(&req, &host);
//! assert_eq!(decision, Forward::to("sip:alice@10.0.0.5").into());
//! ```

pub mod bindings;
mod config;
mod decision;
mod host;
pub mod records;
mod request;
pub mod sip;

pub use config::Config;
pub use decision::{Decision, Failure, FailureDecision, Forward, Media, Reply, Target, Transport};
pub use host::{Host, Level, MockHost};
pub use request::{Edit, EditError, Peer, Request};

/// A routing plugin. Implement it and export it with [`export_plugin!`].
pub trait Plugin: Sized + 'static {
    /// Called once per loaded version with the plugin's configuration table
    /// (`[plugins.NAME.config]`). An error rejects the version: the previous one
    /// keeps serving and the operator sees the message.
    fn init(config: &Config, host: &Host) -> Result<Self, String>;

    /// Decides what to do with an initial request.
    fn on_request(&mut self, req: &Request, host: &Host) -> Decision;

    /// A target answered with a final negative status (or timed out: 408, or was
    /// unreachable: 503). The default goes on with the remaining targets.
    fn on_failure(&mut self, req: &Request, failure: &Failure, host: &Host) -> FailureDecision {
        let _ = (req, failure, host);
        FailureDecision::Proceed
    }
}

/// Exports a [`Plugin`] type as the plugin's entry points.
///
/// ```ignore
/// weir_sdk::export_plugin!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[allow(unsafe_code)]
        const _: () = {
            ::std::thread_local! {
                static __WEIR_PLUGIN: ::std::cell::RefCell<::std::option::Option<$plugin>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }
            #[allow(dead_code)]
            struct __WeirExport;
            impl $crate::bindings::exports::weir::proxy::handler::Guest for __WeirExport {
                fn init(
                    config: ::std::string::String,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::init::<$plugin>(&__WEIR_PLUGIN, &config)
                }
                fn on_request(
                    req: &$crate::bindings::weir::proxy::types::Request,
                ) -> $crate::bindings::weir::proxy::types::Decision {
                    $crate::__private::on_request::<$plugin>(&__WEIR_PLUGIN, req)
                }
                fn on_failure(
                    req: &$crate::bindings::weir::proxy::types::Request,
                    failure: $crate::bindings::weir::proxy::types::Failure,
                ) -> $crate::bindings::weir::proxy::types::FailureDecision {
                    $crate::__private::on_failure::<$plugin>(&__WEIR_PLUGIN, req, failure)
                }
            }
            // Native builds (unit tests) export nothing: the export names are
            // component names that native linkers reject.
            #[cfg(target_arch = "wasm32")]
    $crate::bindings::__export_weir_plugin!(__WeirExport with_types_in $crate::bindings);
        };
    };
}

#[doc(hidden)]
pub mod __private {
    use std::cell::RefCell;
    use std::thread::LocalKey;

    use crate::bindings::weir::proxy::types as wit;
    use crate::{Config, Decision, Failure, FailureDecision, Host, Plugin, Request};

    pub fn init<P: Plugin>(
        cell: &'static LocalKey<RefCell<Option<P>>>,
        config: &str,
    ) -> Result<(), String> {
        let config = Config::parse(config)?;
        let plugin = P::init(&config, &Host::wasm())?;
        cell.with(|c| *c.borrow_mut() = Some(plugin));
        Ok(())
    }

    pub fn on_request<P: Plugin>(
        cell: &'static LocalKey<RefCell<Option<P>>>,
        req: &wit::Request,
    ) -> wit::Decision {
        let req = Request::wasm(req);
        cell.with(|c| match c.borrow_mut().as_mut() {
            Some(p) => p.on_request(&req, &Host::wasm()),
            // The host calls init first; if it did not, say nothing useful.
            None => Decision::Continue,
        })
        .into_wit()
    }

    pub fn on_failure<P: Plugin>(
        cell: &'static LocalKey<RefCell<Option<P>>>,
        req: &wit::Request,
        failure: wit::Failure,
    ) -> wit::FailureDecision {
        let req = Request::wasm(req);
        let failure = Failure::from_wit(failure);
        cell.with(|c| match c.borrow_mut().as_mut() {
            Some(p) => p.on_failure(&req, &failure, &Host::wasm()),
            None => FailureDecision::Proceed,
        })
        .into_wit()
    }
}
