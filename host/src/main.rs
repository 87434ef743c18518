//! `weir`: the command line of the Weir SIP edge proxy.

mod admin;
mod config;
mod media;
mod plugin_cli;
mod plugins;
mod runtime;
mod tls;
mod transport;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use weir_plugin_host::{Chain, MemoryRegistry, Services};
use weir_sip::proxy::{FallbackRouter, Router};

// Messages allocate and free many small buffers; mimalloc keeps that cheap and
// does not fragment under load the way the system allocator does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "weir", version, about = "A programmable SIP edge proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (on the embedded default configuration when no file is given).
    Run {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and exit: 0 when valid, 1 with every error.
    CheckConfig {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Plugin tools: start a plugin crate, check a component, replay fixtures.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Print the version.
    Version,
    /// Print the embedded default configuration (a commented example of every key).
    DefaultConfig,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Create a plugin crate NAME (builds standalone, with a passing test).
    New {
        name: String,
        /// The folder to create it in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The weir-sdk sources (default: the checkout this weir was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Tell what the proxy would think of a component: world version, exports,
    /// imports it uses, init result, size.
    Check {
        file: PathBuf,
        /// The plugin's configuration, as JSON, for init.
        #[arg(long, default_value = "{}")]
        config: String,
    },
    /// Replay SIP messages (DIR/*.sip) through the real runtime and compare each
    /// decision with DIR/NAME.expect; exit 1 on a mismatch.
    Test {
        file: PathBuf,
        #[arg(long)]
        fixtures: PathBuf,
        /// The plugin's configuration as JSON (default: DIR/config.json or {}).
        #[arg(long)]
        config: Option<String>,
        /// Write missing .expect files from what the plugin decides.
        #[arg(long)]
        bless: bool,
    },
}

fn plugin_command(command: PluginCommand) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .try_init();
    let result = match command {
        PluginCommand::New { name, dir, sdk } => plugin_cli::new(&name, &dir, sdk.as_deref())
            .map(|d| {
                format!(
                    "created {}: `cargo test` there, then `cargo build --target wasm32-wasip2 --release`",
                    d.display()
                )
            }),
        PluginCommand::Check { file, config } => plugin_cli::check(&file, &config),
        PluginCommand::Test {
            file,
            fixtures,
            config,
            bless,
        } => plugin_cli::test(&file, &fixtures, config.as_deref(), bless),
    };
    match result {
        Ok(out) => {
            println!("{}", out.trim_end());
            ExitCode::SUCCESS
        }
        Err(out) => {
            println!("{}", out.trim_end());
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Plugin { command } => plugin_command(command),
        Command::Version => {
            println!("weir {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::DefaultConfig => {
            print!("{}", config::EMBEDDED_DEFAULT);
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => match load(Some(&config)) {
            Ok(c) => {
                let listen: Vec<String> = c
                    .listen
                    .iter()
                    .map(|(t, a)| format!("{}:{a}", t.param()))
                    .collect();
                // Plugins are checked the way a reload would: compiled, matched
                // against the world and their capabilities, and init-ed.
                if let Some(p) = &c.plugins {
                    let services = Arc::new(
                        Services::new(Arc::new(MemoryRegistry::new())).with_acls(c.acls.clone()),
                    );
                    let host = match plugins::PluginHost::start(p.clone(), services) {
                        Ok(h) => h,
                        Err(e) => {
                            eprintln!("{}: {e}", config.display());
                            return ExitCode::FAILURE;
                        }
                    };
                    let mut bad = false;
                    for s in host.status().iter().filter(|s| s.in_chain) {
                        match (&s.last_error, s.state) {
                            (Some(e), _) => {
                                bad = true;
                                eprintln!("{}: plugin {}: {e}", config.display(), s.name);
                            }
                            (None, "missing") => {
                                bad = true;
                                eprintln!(
                                    "{}: plugin {}: no file {}",
                                    config.display(),
                                    s.name,
                                    s.file
                                );
                            }
                            _ => println!(
                                "plugin {}: OK ({} bytes, {})",
                                s.name,
                                s.size.unwrap_or(0),
                                s.world.as_deref().unwrap_or("?")
                            ),
                        }
                    }
                    if bad {
                        return ExitCode::FAILURE;
                    }
                }
                println!("{}: OK (listen {})", config.display(), listen.join(", "));
                ExitCode::SUCCESS
            }
            Err(msg) => {
                eprintln!("{msg}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let cfg = match load(config.as_deref()) {
                Ok(c) => c,
                Err(msg) => {
                    eprintln!("{msg}");
                    return ExitCode::FAILURE;
                }
            };
            let _log_guard = init_logging(&cfg);
            // One thread runs the proxy loop, its UDP sockets and its connections:
            // a call's messages never cross threads. (Sharding by Call-ID over one
            // such loop per core is the way to more cores.)
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let source = config.map_or_else(
                || "embedded default".to_string(),
                |p| p.display().to_string(),
            );
            tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %source, "weir starting");
            let services = Arc::new(
                Services::new(Arc::new(MemoryRegistry::new()))
                    .with_registrar(cfg.registrar)
                    .with_acls(cfg.acls.clone()),
            );
            let plugin_host = match &cfg.plugins {
                None => None,
                Some(p) => match plugins::PluginHost::start(p.clone(), services.clone()) {
                    Ok(h) => Some(h),
                    Err(e) => {
                        tracing::error!("{e}");
                        eprintln!("weir: {e}");
                        return ExitCode::FAILURE;
                    }
                },
            };
            let _watcher = match (&plugin_host, &cfg.plugins) {
                (Some(h), Some(p)) if p.watch => match h.watch() {
                    Ok(w) => Some(w),
                    Err(e) => {
                        eprintln!("weir: {e}");
                        return ExitCode::FAILURE;
                    }
                },
                _ => None,
            };
            let fallback = FallbackRouter(cfg.fallback);
            let router: Box<dyn Router> = match &plugin_host {
                Some(h) => Box::new(Chain::new(h.set(), services.clone(), fallback)),
                None => Box::new(fallback),
            };
            let stats = runtime::SharedStats::default();
            let admin = admin::Admin {
                services,
                plugins: plugin_host.clone(),
                sip_host: cfg.sip_host(),
                proxy_stats: stats.clone(),
                users: cfg.digest.provisioned.clone(),
                configured_users: cfg.digest.users.keys().cloned().collect(),
            };
            let admin_listen = cfg.admin_listen;
            let started = rt.block_on(async move {
                if let Some(addr) = admin_listen {
                    admin::serve(addr, admin).await?;
                }
                runtime::run(cfg, router, stats, shutdown_signal()).await
            });
            match started {
                Ok(()) => ExitCode::SUCCESS,
                Err(msg) => {
                    tracing::error!("{msg}");
                    eprintln!("weir: {msg}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Reads and validates the configuration; the error text names the file, the
/// line and the key of every problem.
fn load(path: Option<&std::path::Path>) -> Result<config::Config, String> {
    let (name, text) = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("{}: cannot read: {e}", p.display()))?;
            (p.display().to_string(), text)
        }
        None => (
            "(embedded default)".to_string(),
            config::EMBEDDED_DEFAULT.to_string(),
        ),
    };
    config::parse(&text).map_err(|errors| {
        errors
            .iter()
            .map(|e| format!("{name}: {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// Logs go to stderr through a writer thread: the proxy loop never waits on
/// the log's file or pipe (a disk busy writing back can stall a write for
/// milliseconds). Lines beyond the buffer are dropped rather than waited for.
/// The guard flushes what is buffered when it is dropped at exit.
fn init_logging(cfg: &config::Config) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // rustls warns about each peer's protocol oddities (an IP address sent as
    // SNI…): one line per handshake that any client can provoke. Weir logs
    // the handshakes that fail itself. An explicit `rustls=…` still wins.
    let filter = if cfg.log_level.contains("rustls") || std::env::var_os("RUST_LOG").is_some() {
        filter
    } else {
        filter.add_directive("rustls=error".parse().unwrap_or_default())
    };
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(100_000)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    // Colours only on a terminal: a log file or journal gets plain text
    // (escape codes there break grep and log shippers).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    if cfg.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    guard
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
