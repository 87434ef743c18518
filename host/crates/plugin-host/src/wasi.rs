//! The slice of WASI 0.2 a plugin gets: random numbers, clocks, an empty
//! environment, and stdout/stderr that go to the log under the plugin's name.
//! Nothing else exists: no files, no sockets, no environment variables, no stdin
//! data.
//!
//! Rust's standard library for `wasm32-wasip2` imports some of these even when a
//! plugin never uses them (HashMap seeds, panic messages), so they have to be
//! there. We provide them ourselves rather than through `wasmtime-wasi`: its
//! synchronous bindings drive a Tokio runtime inside every stream call, which
//! panics when the caller already runs on one, as the proxy loop does. Our
//! streams never block, so no runtime is needed.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;
use wasmtime::component::{
    ComponentType, Lift, Linker, LinkerInstance, Lower, Resource, ResourceType,
};
use wasmtime::{Result, StoreContextMut};

use crate::state::State;

/// `wasi:io/error.error`; never created (our streams do not fail).
struct IoError;
/// `wasi:io/poll.pollable`; always ready.
struct Pollable;
/// `wasi:io/streams.input-stream`; stdin, always at its end.
struct InputStream;
/// `wasi:io/streams.output-stream`; rep 1 is stdout, 2 stderr.
struct OutputStream;
/// `wasi:cli/terminal-*`; never created.
struct Terminal;

#[derive(ComponentType, Lift, Lower)]
#[component(variant)]
enum StreamError {
    #[component(name = "last-operation-failed")]
    LastOperationFailed(Resource<IoError>),
    #[component(name = "closed")]
    Closed,
}

#[derive(ComponentType, Lift, Lower, Clone, Copy)]
#[component(record)]
struct Datetime {
    seconds: u64,
    nanoseconds: u32,
}

/// The largest single write a plugin may make to stdout/stderr.
const MAX_WRITE: u64 = 64 * 1024;

/// Defines the WASI interfaces `names` (as the component imports them, with
/// their versions) in `linker`. Returns the names it does not provide.
pub(crate) fn add_to_linker<'a>(
    linker: &mut Linker<State>,
    names: impl Iterator<Item = &'a str>,
) -> Result<Vec<String>> {
    let mut unknown = Vec::new();
    for name in names {
        let interface = name.split('@').next().unwrap_or(name);
        let mut inst = linker.instance(name)?;
        match interface {
            "wasi:io/error" => io_error(&mut inst)?,
            "wasi:io/poll" => io_poll(&mut inst)?,
            "wasi:io/streams" => io_streams(&mut inst)?,
            "wasi:cli/stdout" => {
                inst.func_wrap("get-stdout", |_: StoreContextMut<'_, State>, (): ()| {
                    Ok((Resource::<OutputStream>::new_own(1),))
                })?;
            }
            "wasi:cli/stderr" => {
                inst.func_wrap("get-stderr", |_: StoreContextMut<'_, State>, (): ()| {
                    Ok((Resource::<OutputStream>::new_own(2),))
                })?;
            }
            "wasi:cli/stdin" => {
                inst.func_wrap("get-stdin", |_: StoreContextMut<'_, State>, (): ()| {
                    Ok((Resource::<InputStream>::new_own(0),))
                })?;
            }
            "wasi:cli/environment" => cli_environment(&mut inst)?,
            "wasi:cli/terminal-input" => {
                inst.resource(
                    "terminal-input",
                    ResourceType::host::<Terminal>(),
                    |_, _| Ok(()),
                )?;
            }
            "wasi:cli/terminal-output" => {
                inst.resource(
                    "terminal-output",
                    ResourceType::host::<Terminal>(),
                    |_, _| Ok(()),
                )?;
            }
            // Plugins have no terminal.
            "wasi:cli/terminal-stdin" => {
                inst.func_wrap(
                    "get-terminal-stdin",
                    |_: StoreContextMut<'_, State>, (): ()| Ok((None::<Resource<Terminal>>,)),
                )?;
            }
            "wasi:cli/terminal-stdout" => {
                inst.func_wrap(
                    "get-terminal-stdout",
                    |_: StoreContextMut<'_, State>, (): ()| Ok((None::<Resource<Terminal>>,)),
                )?;
            }
            "wasi:cli/terminal-stderr" => {
                inst.func_wrap(
                    "get-terminal-stderr",
                    |_: StoreContextMut<'_, State>, (): ()| Ok((None::<Resource<Terminal>>,)),
                )?;
            }
            "wasi:cli/exit" => cli_exit(&mut inst)?,
            "wasi:clocks/monotonic-clock" => monotonic_clock(&mut inst)?,
            "wasi:clocks/wall-clock" => wall_clock(&mut inst)?,
            "wasi:random/random" | "wasi:random/insecure" => random(&mut inst, interface)?,
            "wasi:random/insecure-seed" => {
                inst.func_wrap("insecure-seed", |_: StoreContextMut<'_, State>, (): ()| {
                    let mut rng = rand::thread_rng();
                    Ok(((rng.next_u64(), rng.next_u64()),))
                })?;
            }
            _ => unknown.push(name.to_string()),
        }
    }
    Ok(unknown)
}

fn io_error(inst: &mut LinkerInstance<'_, State>) -> Result<()> {
    inst.resource("error", ResourceType::host::<IoError>(), |_, _| Ok(()))?;
    inst.func_wrap(
        "[method]error.to-debug-string",
        |_: StoreContextMut<'_, State>, (_e,): (Resource<IoError>,)| Ok((String::new(),)),
    )
}

fn io_poll(inst: &mut LinkerInstance<'_, State>) -> Result<()> {
    inst.resource("pollable", ResourceType::host::<Pollable>(), |_, _| Ok(()))?;
    inst.func_wrap(
        "[method]pollable.ready",
        |_: StoreContextMut<'_, State>, (_p,): (Resource<Pollable>,)| Ok((true,)),
    )?;
    inst.func_wrap(
        "[method]pollable.block",
        |_: StoreContextMut<'_, State>, (_p,): (Resource<Pollable>,)| Ok(()),
    )?;
    inst.func_wrap(
        "poll",
        |_: StoreContextMut<'_, State>, (list,): (Vec<Resource<Pollable>>,)| {
            let ready: Vec<u32> = (0..list.len() as u32).collect();
            Ok((ready,))
        },
    )
}

fn io_streams(inst: &mut LinkerInstance<'_, State>) -> Result<()> {
    inst.resource(
        "input-stream",
        ResourceType::host::<InputStream>(),
        |_, _| Ok(()),
    )?;
    inst.resource(
        "output-stream",
        ResourceType::host::<OutputStream>(),
        |_, _| Ok(()),
    )?;
    for read in [
        "[method]input-stream.read",
        "[method]input-stream.blocking-read",
    ] {
        inst.func_wrap(
            read,
            |_: StoreContextMut<'_, State>, (_s, _n): (Resource<InputStream>, u64)| {
                Ok((Err::<Vec<u8>, _>(StreamError::Closed),))
            },
        )?;
    }
    for skip in [
        "[method]input-stream.skip",
        "[method]input-stream.blocking-skip",
    ] {
        inst.func_wrap(
            skip,
            |_: StoreContextMut<'_, State>, (_s, _n): (Resource<InputStream>, u64)| {
                Ok((Err::<u64, _>(StreamError::Closed),))
            },
        )?;
    }
    inst.func_wrap(
        "[method]input-stream.subscribe",
        |_: StoreContextMut<'_, State>, (_s,): (Resource<InputStream>,)| {
            Ok((Resource::<Pollable>::new_own(0),))
        },
    )?;
    inst.func_wrap(
        "[method]output-stream.check-write",
        |_: StoreContextMut<'_, State>, (_s,): (Resource<OutputStream>,)| {
            Ok((Ok::<u64, StreamError>(MAX_WRITE),))
        },
    )?;
    for write in [
        "[method]output-stream.write",
        "[method]output-stream.blocking-write-and-flush",
    ] {
        inst.func_wrap(
            write,
            |mut store: StoreContextMut<'_, State>,
             (s, bytes): (Resource<OutputStream>, Vec<u8>)| {
                store.data_mut().output(s.rep(), &bytes);
                Ok((Ok::<(), StreamError>(()),))
            },
        )?;
    }
    for flush in [
        "[method]output-stream.flush",
        "[method]output-stream.blocking-flush",
    ] {
        inst.func_wrap(
            flush,
            |_: StoreContextMut<'_, State>, (_s,): (Resource<OutputStream>,)| {
                Ok((Ok::<(), StreamError>(()),))
            },
        )?;
    }
    for zeroes in [
        "[method]output-stream.write-zeroes",
        "[method]output-stream.blocking-write-zeroes-and-flush",
    ] {
        inst.func_wrap(
            zeroes,
            |_: StoreContextMut<'_, State>, (_s, _n): (Resource<OutputStream>, u64)| {
                Ok((Ok::<(), StreamError>(()),))
            },
        )?;
    }
    for splice in [
        "[method]output-stream.splice",
        "[method]output-stream.blocking-splice",
    ] {
        inst.func_wrap(
            splice,
            |_: StoreContextMut<'_, State>,
             (_s, _i, _n): (Resource<OutputStream>, Resource<InputStream>, u64)| {
                Ok((Err::<u64, _>(StreamError::Closed),))
            },
        )?;
    }
    inst.func_wrap(
        "[method]output-stream.subscribe",
        |_: StoreContextMut<'_, State>, (_s,): (Resource<OutputStream>,)| {
            Ok((Resource::<Pollable>::new_own(0),))
        },
    )
}

fn cli_environment(inst: &mut LinkerInstance<'_, State>) -> Result<()> {
    inst.func_wrap(
        "get-environment",
        |_: StoreContextMut<'_, State>, (): ()| Ok((Vec::<(String, String)>::new(),)),
    )?;
    inst.func_wrap("get-arguments", |_: StoreContextMut<'_, State>, (): ()| {
        Ok((Vec::<String>::new(),))
    })?;
    inst.func_wrap("initial-cwd", |_: StoreContextMut<'_, State>, (): ()| {
        Ok((None::<String>,))
    })
}

fn cli_exit(inst: &mut LinkerInstance<'_, State>) -> Result<()> {
    inst.func_wrap(
        "exit",
        |_: StoreContextMut<'_, State>, (status,): (Result<(), ()>,)| -> Result<()> {
            Err(wasmtime::format_err!(
                "the plugin called exit ({})",
                if status.is_ok() { "success" } else { "failure" }
            ))
        },
    )
}

fn monotonic_clock(inst: &mut LinkerInstance<'_, State>) -> Result<()> {
    inst.func_wrap("now", |store: StoreContextMut<'_, State>, (): ()| {
        Ok((store.data().since_start().as_nanos() as u64,))
    })?;
    inst.func_wrap("resolution", |_: StoreContextMut<'_, State>, (): ()| {
        Ok((1u64,))
    })?;
    for subscribe in ["subscribe-instant", "subscribe-duration"] {
        // A plugin cannot wait: the pollable is ready at once.
        inst.func_wrap(subscribe, |_: StoreContextMut<'_, State>, (_t,): (u64,)| {
            Ok((Resource::<Pollable>::new_own(0),))
        })?;
    }
    Ok(())
}

fn wall_clock(inst: &mut LinkerInstance<'_, State>) -> Result<()> {
    inst.func_wrap("now", |_: StoreContextMut<'_, State>, (): ()| {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok((Datetime {
            seconds: d.as_secs(),
            nanoseconds: d.subsec_nanos(),
        },))
    })?;
    inst.func_wrap("resolution", |_: StoreContextMut<'_, State>, (): ()| {
        Ok((Datetime {
            seconds: 0,
            nanoseconds: 1,
        },))
    })
}

fn random(inst: &mut LinkerInstance<'_, State>, interface: &str) -> Result<()> {
    let (bytes, u64_name) = if interface == "wasi:random/random" {
        ("get-random-bytes", "get-random-u64")
    } else {
        ("get-insecure-random-bytes", "get-insecure-random-u64")
    };
    inst.func_wrap(bytes, |_: StoreContextMut<'_, State>, (len,): (u64,)| {
        // Bounded like a memory allocation would be: a plugin cannot ask the
        // host for more than its own memory cap.
        let len = len.min(16 * 1024 * 1024) as usize;
        let mut v = vec![0u8; len];
        rand::thread_rng().fill_bytes(&mut v);
        Ok((v,))
    })?;
    inst.func_wrap(u64_name, |_: StoreContextMut<'_, State>, (): ()| {
        Ok((rand::thread_rng().next_u64(),))
    })
}
