//! Sans-IO SIP for Weir.
//!
//! This crate holds the protocol logic of the proxy and nothing else: no sockets,
//! no clock reads, no async runtime. Bytes and the current time go in; bytes to
//! send, timer deadlines and events come out. The `weir` binary owns the I/O.
//!
//! - [`message`]: byte-preserving messages, [`framing`] of datagrams and streams;
//! - [`uri`] and [`headers`]: the typed views a proxy needs, parsed lazily;
//! - [`transaction`]: the four state machines of RFC 3261 §17 (with RFC 6026);
//! - [`proxy`]: the transaction-stateful proxy of RFC 3261 §16;
//! - [`digest`]: HTTP Digest (RFC 7616, RFC 8760) for both ends of a challenge;
//! - [`registrar`]: the bindings of RFC 3261 §10.3.

pub mod build;
pub mod digest;
pub mod framing;
#[doc(hidden)]
pub mod fuzzing;
pub mod headers;
pub mod message;
pub mod proxy;
pub mod registrar;
mod slab;
mod text;
pub mod transaction;
pub mod uri;

pub use message::{Framing, Message, Method, Rewrite};
pub use text::unescape;
