//! The TOML configuration: parsing, validation, and the errors that name the key
//! and the line. `weir.example.toml` documents every key and is the embedded default.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;
use weir_plugin_host::{Capabilities, Limits, OnError};
use weir_sip::digest::Algorithm;
use weir_sip::proxy::{
    ClientCredential, DigestSettings, Fallback, Listener, ProxyConfig, RecordRoute,
    RegistrationConfig, StoredUser, Transport,
};
use weir_sip::registrar::RegistrarSettings;
use weir_sip::transaction::Timers;

mod media;
pub use media::MediaSettings;

/// The configuration used when `weir run` is given no file.
pub const EMBEDDED_DEFAULT: &str = include_str!("../weir.example.toml");

/// A configuration problem: which key, on which line, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<(Transport, SocketAddr)>,
    pub advertise: Option<(String, Option<u16>)>,
    pub aliases: Vec<(String, Option<u16>)>,
    pub record_route: RecordRoute,
    pub timers: Timers,
    pub max_message_size: usize,
    pub udp_max: usize,
    pub forward_stray_responses: bool,
    pub server_name: Option<String>,
    pub fallback: Fallback,
    pub ring_timeout: Duration,
    pub tcp_idle_timeout: Duration,
    pub tcp_connect_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    pub udp_receive_buffer: usize,
    pub log_level: String,
    pub log_json: bool,
    /// None when there is no `[plugins]` section: routing is the fallback's.
    pub plugins: Option<PluginsConfig>,
    /// None when there is no `[admin]` section.
    pub admin_listen: Option<SocketAddr>,
    /// `[credentials.NAME]`: what targets naming NAME answer a next hop's
    /// digest challenge with.
    pub credentials: HashMap<String, ClientCredential>,
    /// `[sip] accept_from`: the ranges of the lists named there; requests from
    /// anywhere else get 403. None: every source.
    pub accept_from: Option<Vec<IpNet>>,
    /// `[digest]`: how callers a plugin challenges authenticate (the nonce
    /// secret is drawn by [`Config::proxy_config`]).
    pub digest: DigestSettings,
    /// `[acl]` lists by name (for `accept_from` and the plugins' `acl` import).
    pub acls: BTreeMap<String, Vec<IpNet>>,
    /// `[registrar]`: limits of the bindings `register` decisions make.
    pub registrar: RegistrarSettings,
    /// `[tls]`: the listeners' certificate and outbound trust.
    pub tls: TlsConfig,
    /// `[[registrations]]`: addresses-of-record kept registered upstream.
    pub registrations: Vec<RegistrationConfig>,
    /// `[media]`: the RTP relay; None when it is off.
    pub media: Option<MediaSettings>,
}

/// `[tls]`, checked: the files named load (a pair that matches, a CA file
/// with certificates in it).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM chain and key of the `tls:` listeners (required when there is one).
    pub certificate: Option<(PathBuf, PathBuf)>,
    /// The CAs outbound TLS trusts; None: the system's roots.
    pub ca_file: Option<PathBuf>,
    pub handshake_timeout: Duration,
}

/// `[plugins]`: where plugins come from, their order and their limits.
#[derive(Debug, Clone)]
pub struct PluginsConfig {
    pub dir: PathBuf,
    pub watch: bool,
    /// Plugin names in the order they are asked. Empty: every `.wasm` in `dir`,
    /// by name.
    pub chain: Vec<String>,
    pub limits: Limits,
    /// `[plugins.NAME]` tables.
    pub each: BTreeMap<String, PluginSettings>,
}

/// `[plugins.NAME]`.
#[derive(Debug, Clone, Default)]
pub struct PluginSettings {
    pub on_error: OnError,
    pub capabilities: Capabilities,
    /// The `config` table as JSON, handed to `init`.
    pub config_json: String,
}

impl PluginsConfig {
    /// The settings of plugin `name` (defaults when it has no table).
    pub fn settings(&self, name: &str) -> PluginSettings {
        self.each
            .get(name)
            .cloned()
            .unwrap_or_else(|| PluginSettings {
                config_json: "{}".into(),
                ..PluginSettings::default()
            })
    }
}

impl Config {
    /// `host[:port]` other parties reach this proxy at: the advertised name,
    /// else the first listen address (the port left out when it is 5060).
    pub fn sip_host(&self) -> String {
        let Some(&(_, addr)) = self.listen.first() else {
            return "localhost".into();
        };
        let (host, port) = match &self.advertise {
            Some((host, port)) => (host.clone(), port.unwrap_or(addr.port())),
            None if addr.is_ipv6() => (format!("[{}]", addr.ip()), addr.port()),
            None => (addr.ip().to_string(), addr.port()),
        };
        if port == 5060 {
            host
        } else {
            format!("{host}:{port}")
        }
    }

    /// The proxy core's settings.
    pub fn proxy_config(&self) -> ProxyConfig {
        let listeners = self
            .listen
            .iter()
            .map(|&(t, addr)| {
                let mut l = Listener::new(t, addr);
                if let Some((host, port)) = &self.advertise {
                    l.advertise_host = host.clone();
                    if let Some(p) = port {
                        l.advertise_port = *p;
                    }
                }
                l
            })
            .collect();
        let mut cfg = ProxyConfig::new(listeners);
        cfg.aliases = self.aliases.clone();
        cfg.timers = self.timers;
        cfg.record_route = self.record_route;
        cfg.fallback = self.fallback;
        cfg.ring_timeout = self.ring_timeout;
        cfg.udp_max = self.udp_max;
        cfg.max_message = self.max_message_size;
        cfg.forward_stray_responses = self.forward_stray_responses;
        cfg.server_name = self.server_name.clone();
        cfg.credentials = self.credentials.clone();
        cfg.accept_from = self.accept_from.clone();
        cfg.registrations = self.registrations.clone();
        if let Some(m) = &self.media {
            cfg.media_policy = m.policy;
            cfg.media_max_dialogs = m.max_sessions;
            cfg.media_srtp_over_plain_sip = m.srtp_over_plain_sip;
        }
        cfg.digest = DigestSettings {
            secret: rand::random(),
            ..self.digest.clone()
        };
        cfg
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Raw {
    sip: RawSip,
    routing: RawRouting,
    transport: RawTransport,
    log: RawLog,
    plugins: Option<Spanned<RawPlugins>>,
    admin: Option<RawAdmin>,
    credentials: BTreeMap<String, Spanned<RawCredential>>,
    acl: BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
    digest: RawDigest,
    registrar: RawRegistrar,
    tls: Option<Spanned<RawTls>>,
    registrations: Vec<Spanned<RawRegistration>>,
    media: Option<Spanned<media::RawMedia>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRegistration {
    name: Option<String>,
    registrar: Option<Spanned<String>>,
    aor: Option<Spanned<String>>,
    contact: Option<Spanned<String>>,
    credential: Option<Spanned<String>>,
    expires: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    certificate: Option<Spanned<String>>,
    private_key: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    handshake_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRegistrar {
    min_expires: Option<Spanned<i64>>,
    max_expires: Option<Spanned<i64>>,
    default_expires: Option<Spanned<i64>>,
    max_contacts: Option<Spanned<i64>>,
    max_aors: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDigest {
    algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    nonce_lifetime: Option<Spanned<String>>,
    ban_after: Option<Spanned<i64>>,
    ban_window: Option<Spanned<String>>,
    ban_time: Option<Spanned<String>>,
    users: Vec<Spanned<RawUser>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUser {
    realm: Option<String>,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<Spanned<String>>,
    ha1_md5: Option<String>,
    ha1_sha256: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCredential {
    username: Option<String>,
    password: Option<String>,
    password_file: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawPlugins {
    dir: Option<Spanned<String>>,
    watch: Option<bool>,
    chain: Option<Vec<Spanned<String>>>,
    deadline: Option<Spanned<String>>,
    memory: Option<Spanned<i64>>,
    fuel: Option<Spanned<i64>>,
    instances: Option<Spanned<i64>>,
    /// `[plugins.NAME]` tables (and any misspelt key, reported).
    #[serde(flatten)]
    each: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPlugin {
    on_error: Option<String>,
    capabilities: Option<Vec<String>>,
    config: Option<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSip {
    listen: Option<Spanned<Vec<Spanned<String>>>>,
    advertise: Option<Spanned<String>>,
    aliases: Vec<Spanned<String>>,
    accept_from: Option<Spanned<Vec<Spanned<String>>>>,
    record_route: Option<Spanned<String>>,
    t1: Option<Spanned<String>>,
    t2: Option<Spanned<String>>,
    t4: Option<Spanned<String>>,
    max_message_size: Option<Spanned<i64>>,
    udp_max: Option<Spanned<i64>>,
    forward_stray_responses: Option<bool>,
    server_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRouting {
    fallback: Option<Spanned<String>>,
    ring_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTransport {
    tcp_idle_timeout: Option<Spanned<String>>,
    tcp_connect_timeout: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    max_connections_per_source: Option<Spanned<i64>>,
    udp_receive_buffer: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    level: Option<String>,
    format: Option<Spanned<String>>,
}

/// Collects errors while validating.
struct Check<'a> {
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Check<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }

    fn err<T>(&mut self, key: &str, v: &Spanned<T>, message: impl Into<String>) {
        let line = self.line(v.span().start);
        self.errors.push(ConfigError {
            key: key.to_string(),
            line: Some(line),
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, v: &Option<Spanned<String>>, default: Duration) -> Duration {
        let Some(v) = v else {
            return default;
        };
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.err(key, v, "must be longer than zero");
                default
            }
            Err(e) => {
                self.err(
                    key,
                    v,
                    format!(
                        "\"{}\" is not a duration like \"500ms\" or \"3s\": {e}",
                        v.get_ref()
                    ),
                );
                default
            }
        }
    }

    fn count(
        &mut self,
        key: &str,
        v: &Option<Spanned<i64>>,
        min: i64,
        max: i64,
        default: usize,
    ) -> usize {
        let Some(v) = v else {
            return default;
        };
        let n = *v.get_ref();
        if n < min || n > max {
            self.err(key, v, format!("{n} is outside {min}..={max}"));
            return default;
        }
        usize::try_from(n).unwrap_or(default)
    }

    fn choice<T: Copy>(
        &mut self,
        key: &str,
        v: &Option<Spanned<String>>,
        options: &[(&str, T)],
        default: T,
    ) -> T {
        let Some(v) = v else {
            return default;
        };
        match options.iter().find(|(name, _)| *name == v.get_ref()) {
            Some((_, t)) => *t,
            None => {
                let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
                self.err(
                    key,
                    v,
                    format!("\"{}\" is not one of {}", v.get_ref(), names.join(", ")),
                );
                default
            }
        }
    }
}

/// Parses and validates a configuration text. All problems are reported at once.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    let raw: Raw = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let line = e.span().map(|s| {
                text[..s.start.min(text.len())]
                    .bytes()
                    .filter(|&b| b == b'\n')
                    .count()
                    + 1
            });
            let key = e
                .span()
                .map(|s| text.get(s.clone()).unwrap_or("").trim().to_string())
                .filter(|k| !k.is_empty() && k.len() < 60)
                .unwrap_or_else(|| "(file)".to_string());
            return Err(vec![ConfigError {
                key,
                line,
                message: e.message().to_string(),
            }]);
        }
    };
    let mut c = Check {
        text,
        errors: Vec::new(),
    };
    let mut listen = Vec::new();
    match &raw.sip.listen {
        None => {
            listen.push((Transport::Udp, SocketAddr::from(([127, 0, 0, 1], 5060))));
            listen.push((Transport::Tcp, SocketAddr::from(([127, 0, 0, 1], 5060))));
        }
        Some(list) if list.get_ref().is_empty() => {
            c.err("[sip] listen", list, "needs at least one socket")
        }
        Some(list) => {
            for (i, item) in list.get_ref().iter().enumerate() {
                let key = format!("[sip] listen[{i}]");
                match parse_listen(item.get_ref()) {
                    Ok(l) if listen.contains(&l) => c.err(
                        &key,
                        item,
                        format!("\"{}\" is listed twice", item.get_ref()),
                    ),
                    Ok(l) => listen.push(l),
                    Err(m) => c.err(&key, item, m),
                }
            }
        }
    }
    let advertise = raw
        .sip
        .advertise
        .as_ref()
        .and_then(|a| match parse_advertise(a.get_ref()) {
            Ok(v) => Some(v),
            Err(m) => {
                c.err("[sip] advertise", a, m);
                None
            }
        });
    if advertise.is_none() {
        if let (Some(list), Some((_, addr))) = (
            &raw.sip.listen,
            listen.iter().find(|(_, a)| a.ip().is_unspecified()),
        ) {
            c.err(
                "[sip] listen",
                list,
                format!("{addr} is a wildcard address: set [sip] advertise to the address peers should use"),
            );
        }
    }
    let mut aliases = Vec::new();
    for (i, a) in raw.sip.aliases.iter().enumerate() {
        match parse_advertise(a.get_ref()) {
            Ok(alias) => aliases.push(alias),
            Err(m) => c.err(&format!("[sip] aliases[{i}]"), a, m),
        }
    }
    let record_route = c.choice(
        "[sip] record_route",
        &raw.sip.record_route,
        &[
            ("dialogs", RecordRoute::Dialogs),
            ("never", RecordRoute::Never),
        ],
        RecordRoute::Dialogs,
    );
    let defaults = Timers::default();
    let timers = Timers {
        t1: c.duration("[sip] t1", &raw.sip.t1, defaults.t1),
        t2: c.duration("[sip] t2", &raw.sip.t2, defaults.t2),
        t4: c.duration("[sip] t4", &raw.sip.t4, defaults.t4),
    };
    if timers.t2 < timers.t1 {
        if let Some(t2) = &raw.sip.t2 {
            c.err("[sip] t2", t2, "must not be shorter than t1");
        }
    }
    let max_message_size = c.count(
        "[sip] max_message_size",
        &raw.sip.max_message_size,
        1024,
        1 << 24,
        65_535,
    );
    let udp_max = c.count("[sip] udp_max", &raw.sip.udp_max, 200, 65_507, 1300);
    let fallback = c.choice(
        "[routing] fallback",
        &raw.routing.fallback,
        &[
            ("request-uri", Fallback::RequestUri),
            ("reject", Fallback::Reject),
        ],
        Fallback::RequestUri,
    );
    let ring_timeout = c.duration(
        "[routing] ring_timeout",
        &raw.routing.ring_timeout,
        Duration::from_secs(180),
    );
    let tcp_idle_timeout = c.duration(
        "[transport] tcp_idle_timeout",
        &raw.transport.tcp_idle_timeout,
        Duration::from_secs(300),
    );
    let tcp_connect_timeout = c.duration(
        "[transport] tcp_connect_timeout",
        &raw.transport.tcp_connect_timeout,
        Duration::from_secs(5),
    );
    let max_connections = c.count(
        "[transport] max_connections",
        &raw.transport.max_connections,
        1,
        1_000_000,
        10_000,
    );
    let max_connections_per_source = c.count(
        "[transport] max_connections_per_source",
        &raw.transport.max_connections_per_source,
        1,
        1_000_000,
        64,
    );
    let udp_receive_buffer = c.count(
        "[transport] udp_receive_buffer",
        &raw.transport.udp_receive_buffer,
        65_536,
        1 << 30,
        4 << 20,
    );
    let log_json = c.choice(
        "[log] format",
        &raw.log.format,
        &[("text", false), ("json", true)],
        false,
    );
    let plugins = raw.plugins.as_ref().map(|p| plugins_config(&mut c, p));
    let admin_listen = raw.admin.as_ref().map(|a| match &a.listen {
        None => SocketAddr::from(([127, 0, 0, 1], 9070)),
        Some(l) => l.get_ref().parse().unwrap_or_else(|_| {
            c.err(
                "[admin] listen",
                l,
                format!("\"{}\" is not IP:PORT", l.get_ref()),
            );
            SocketAddr::from(([127, 0, 0, 1], 9070))
        }),
    });
    let credentials = credentials(&mut c, &raw.credentials);
    let digest = digest_settings(&mut c, &raw.digest);
    let registrar = registrar_settings(&mut c, &raw.registrar);
    let tls = tls_config(&mut c, raw.tls.as_ref(), &raw.sip.listen, &listen);
    let registrations = registrations(&mut c, &raw.registrations, &credentials);
    let acls = acls(&mut c, &raw.acl);
    let media = media::media_settings(
        &mut c,
        raw.media.as_ref(),
        &listen,
        advertise.as_ref().map(|(h, _)| h.as_str()),
    );
    let accept_from = raw.sip.accept_from.as_ref().map(|names| {
        let mut nets = Vec::new();
        for (i, name) in names.get_ref().iter().enumerate() {
            match acls.get(name.get_ref()) {
                Some(list) => nets.extend(list.iter().copied()),
                None => c.err(
                    &format!("[sip] accept_from[{i}]"),
                    name,
                    format!("no [acl] list is named {:?}", name.get_ref()),
                ),
            }
        }
        nets
    });
    if !c.errors.is_empty() {
        // In the order of the file, whatever order the checks ran in.
        c.errors.sort_by_key(|e| e.line);
        return Err(c.errors);
    }
    Ok(Config {
        plugins,
        admin_listen,
        credentials,
        accept_from,
        digest,
        acls,
        registrar,
        tls,
        registrations,
        media,
        listen,
        advertise,
        aliases,
        record_route,
        timers,
        max_message_size,
        udp_max,
        forward_stray_responses: raw.sip.forward_stray_responses.unwrap_or(true),
        server_name: match raw.sip.server_name {
            Some(s) if s.is_empty() => None,
            Some(s) => Some(s),
            None => Some("weir".to_string()),
        },
        fallback,
        ring_timeout,
        tcp_idle_timeout,
        tcp_connect_timeout,
        max_connections,
        max_connections_per_source,
        udp_receive_buffer,
        log_level: raw.log.level.unwrap_or_else(|| "info".to_string()),
        log_json,
    })
}

fn plugins_config(c: &mut Check<'_>, raw: &Spanned<RawPlugins>) -> PluginsConfig {
    let p = raw.get_ref();
    let defaults = Limits::default();
    let deadline = c.duration("[plugins] deadline", &p.deadline, defaults.deadline);
    if deadline > Duration::from_secs(1) {
        if let Some(d) = &p.deadline {
            c.err(
                "[plugins] deadline",
                d,
                "is longer than 1s: a plugin call holds up every request behind it",
            );
        }
    }
    let memory = c.count(
        "[plugins] memory",
        &p.memory,
        1 << 20,
        1 << 32,
        defaults.memory,
    );
    let fuel = c.count("[plugins] fuel", &p.fuel, 0, i64::MAX, 0);
    let instances = c.count(
        "[plugins] instances",
        &p.instances,
        4,
        10_000,
        defaults.instances as usize,
    );
    let limits = Limits {
        deadline,
        memory,
        fuel: (fuel > 0).then_some(fuel as u64),
        instances: instances as u32,
    };
    let mut chain = Vec::new();
    for (i, name) in p.chain.iter().flatten().enumerate() {
        let key = format!("[plugins] chain[{i}]");
        if !valid_plugin_name(name.get_ref()) {
            c.err(
                &key,
                name,
                format!(
                    "\"{}\" is not a plugin name (letters, digits, - and _)",
                    name.get_ref()
                ),
            );
        } else if chain.contains(name.get_ref()) {
            c.err(
                &key,
                name,
                format!("\"{}\" is listed twice", name.get_ref()),
            );
        } else {
            chain.push(name.get_ref().clone());
        }
    }
    let mut each = BTreeMap::new();
    for (name, value) in &p.each {
        let key = format!("[plugins.{name}]");
        let toml::Value::Table(t) = value else {
            c.err(&format!("[plugins] {name}"), raw, "unknown key (known: dir, watch, chain, deadline, memory, fuel, instances, and [plugins.NAME] tables)");
            continue;
        };
        if !valid_plugin_name(name) {
            c.err(&key, raw, "is not a plugin name (letters, digits, - and _)");
            continue;
        }
        let rp: RawPlugin = match toml::Value::Table(t.clone()).try_into() {
            Ok(r) => r,
            Err(e) => {
                c.err(&key, raw, e.message().to_string());
                continue;
            }
        };
        let on_error = match rp.on_error.as_deref() {
            None | Some("reject") => OnError::Reject,
            Some("continue") => OnError::Continue,
            Some(other) => {
                c.err(
                    &format!("{key} on_error"),
                    raw,
                    format!("\"{other}\" is not \"reject\" or \"continue\""),
                );
                OnError::Reject
            }
        };
        let capabilities = match &rp.capabilities {
            None => Capabilities::default(),
            Some(list) => {
                let mut caps = Capabilities::none();
                for cap in list {
                    if !caps.grant(cap) {
                        c.err(
                            &format!("{key} capabilities"),
                            raw,
                            format!("\"{cap}\" is not one of {}", Capabilities::NAMES.join(", ")),
                        );
                    }
                }
                caps
            }
        };
        let config_json =
            serde_json::to_string(&rp.config.unwrap_or_default()).unwrap_or_else(|_| "{}".into());
        each.insert(
            name.clone(),
            PluginSettings {
                on_error,
                capabilities,
                config_json,
            },
        );
    }
    PluginsConfig {
        dir: PathBuf::from(p.dir.as_ref().map_or("plugins", |d| d.get_ref().as_str())),
        watch: p.watch.unwrap_or(true),
        chain,
        limits,
        each,
    }
}

/// `[[registrations]]`: `registrar` and `aor` are SIP URIs, `credential`
/// names a `[credentials.NAME]`, `expires` is a duration of 1 min to 1 day.
fn registrations(
    c: &mut Check<'_>,
    raw: &[Spanned<RawRegistration>],
    credentials: &HashMap<String, ClientCredential>,
) -> Vec<RegistrationConfig> {
    let mut out = Vec::new();
    for (i, spanned) in raw.iter().enumerate() {
        let r = spanned.get_ref();
        let key = format!("[[registrations]] #{}", i + 1);
        let sip_uri = |c: &mut Check<'_>, name: &str, v: &Option<Spanned<String>>| match v {
            None => {
                c.err(&format!("{key} {name}"), spanned, "is required");
                None
            }
            Some(v) => match weir_sip::uri::Uri::parse(v.get_ref()) {
                Ok(weir_sip::uri::Uri::Sip(_)) if !v.get_ref().contains(['<', '>', ' ']) => {
                    Some(v.get_ref().clone())
                }
                _ => {
                    c.err(
                        &format!("{key} {name}"),
                        v,
                        format!("\"{}\" is not a sip: or sips: URI", v.get_ref()),
                    );
                    None
                }
            },
        };
        let registrar = sip_uri(c, "registrar", &r.registrar);
        let aor = sip_uri(c, "aor", &r.aor);
        let contact = match &r.contact {
            None => Some(None),
            some => sip_uri(c, "contact", some).map(Some),
        };
        let credential = match &r.credential {
            None => Some(None),
            Some(name) => match credentials.get(name.get_ref()) {
                Some(cred) => Some(Some(cred.clone())),
                None => {
                    c.err(
                        &format!("{key} credential"),
                        name,
                        format!("no [credentials.{}] is configured", name.get_ref()),
                    );
                    None
                }
            },
        };
        let expires = c.duration(
            &format!("{key} expires"),
            &r.expires,
            Duration::from_secs(3600),
        );
        if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&expires) {
            if let Some(e) = &r.expires {
                c.err(&format!("{key} expires"), e, "must be between 1s and 1 day");
            }
        }
        let (Some(registrar), Some(aor), Some(contact), Some(credential)) =
            (registrar, aor, contact, credential)
        else {
            continue;
        };
        let name = r.name.clone().unwrap_or_else(|| aor.clone());
        if out.iter().any(|o: &RegistrationConfig| o.name == name) {
            c.err(
                &format!("{key} name"),
                spanned,
                format!("{name:?} names another registration too (logs, metrics and the API need one each)"),
            );
            continue;
        }
        out.push(RegistrationConfig {
            name,
            registrar,
            aor,
            contact,
            credential,
            expires,
        });
    }
    out
}

/// `[tls]`: `certificate` and `private_key` go together and must load as a
/// matching pair; a `tls:` listener needs them; `ca_file` must hold a CA.
fn tls_config(
    c: &mut Check<'_>,
    raw: Option<&Spanned<RawTls>>,
    listen_key: &Option<Spanned<Vec<Spanned<String>>>>,
    listen: &[(Transport, SocketAddr)],
) -> TlsConfig {
    let empty = RawTls::default();
    let r = raw.map(Spanned::get_ref).unwrap_or(&empty);
    let handshake_timeout = c.duration(
        "[tls] handshake_timeout",
        &r.handshake_timeout,
        Duration::from_secs(5),
    );
    let certificate = match (&r.certificate, &r.private_key) {
        (Some(cert), Some(key)) => {
            let pair = (PathBuf::from(cert.get_ref()), PathBuf::from(key.get_ref()));
            match crate::tls::CertStore::load(&pair.0, &pair.1) {
                Ok(_) => Some(pair),
                Err(e @ crate::tls::TlsError::Key { .. }) => {
                    c.err("[tls] private_key", key, e.to_string());
                    None
                }
                Err(e) => {
                    c.err("[tls] certificate", cert, e.to_string());
                    None
                }
            }
        }
        (Some(cert), None) => {
            c.err("[tls] private_key", cert, "is required with certificate");
            None
        }
        (None, Some(key)) => {
            c.err("[tls] certificate", key, "is required with private_key");
            None
        }
        (None, None) => {
            if let (Some(list), true) =
                (listen_key, listen.iter().any(|(t, _)| *t == Transport::Tls))
            {
                c.err(
                    "[sip] listen",
                    list,
                    "a tls: listener needs [tls] certificate and private_key",
                );
            }
            None
        }
    };
    let ca_file = r.ca_file.as_ref().and_then(|ca| {
        let path = PathBuf::from(ca.get_ref());
        match crate::tls::client_config(Some(&path)) {
            Ok(_) => Some(path),
            Err(e) => {
                c.err("[tls] ca_file", ca, e.to_string());
                None
            }
        }
    });
    TlsConfig {
        certificate,
        ca_file,
        handshake_timeout,
    }
}

/// `[credentials.NAME]`: a username and exactly one of `password` or
/// `password_file` (its first line; kept out of the config file and its logs).
fn credentials(
    c: &mut Check<'_>,
    raw: &BTreeMap<String, Spanned<RawCredential>>,
) -> HashMap<String, ClientCredential> {
    let mut out = HashMap::new();
    for (name, spanned) in raw {
        let key = format!("[credentials.{name}]");
        let r = spanned.get_ref();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b))
        {
            c.err(
                &key,
                spanned,
                "a credential name is letters, digits and - _ : .",
            );
            continue;
        }
        let username = match r.username.as_deref() {
            Some(u) if !u.is_empty() && !u.contains(['\r', '\n', '"']) => u.to_string(),
            Some(_) => {
                c.err(
                    &format!("{key} username"),
                    spanned,
                    "must be one line without quotes",
                );
                continue;
            }
            None => {
                c.err(&format!("{key} username"), spanned, "is required");
                continue;
            }
        };
        let password = match password(c, &key, &r.password, &r.password_file) {
            Ok(Some(p)) => p,
            Err(()) => continue,
            Ok(None) => {
                c.err(
                    &key,
                    spanned,
                    "needs exactly one of password or password_file",
                );
                continue;
            }
        };
        out.insert(name.clone(), ClientCredential { username, password });
    }
    out
}

/// A password given inline or as the first line of a file; `Ok(None)` when
/// neither is given, `Err` (reported) when it cannot be read or both are.
fn password(
    c: &mut Check<'_>,
    key: &str,
    inline: &Option<String>,
    file: &Option<Spanned<String>>,
) -> Result<Option<String>, ()> {
    match (inline, file) {
        (Some(p), None) => Ok(Some(p.clone())),
        (None, Some(file)) => match std::fs::read_to_string(file.get_ref()) {
            Ok(text) => Ok(Some(text.lines().next().unwrap_or_default().to_string())),
            Err(e) => {
                c.err(
                    &format!("{key} password_file"),
                    file,
                    format!("cannot read {}: {e}", file.get_ref()),
                );
                Err(())
            }
        },
        (None, None) => Ok(None),
        (Some(_), Some(file)) => {
            c.err(key, file, "takes password or password_file, not both");
            Err(())
        }
    }
}

/// `[registrar]`: expiry bounds and size limits.
fn registrar_settings(c: &mut Check<'_>, raw: &RawRegistrar) -> RegistrarSettings {
    let d = RegistrarSettings::default();
    let secs = |c: &mut Check<'_>, key: &str, v: &Option<Spanned<i64>>, default: u32| {
        c.count(key, v, 1, i64::from(u32::MAX), default as usize) as u32
    };
    let s = RegistrarSettings {
        min_expires: secs(
            c,
            "[registrar] min_expires",
            &raw.min_expires,
            d.min_expires,
        ),
        max_expires: secs(
            c,
            "[registrar] max_expires",
            &raw.max_expires,
            d.max_expires,
        ),
        default_expires: secs(
            c,
            "[registrar] default_expires",
            &raw.default_expires,
            d.default_expires,
        ),
        max_contacts: c.count(
            "[registrar] max_contacts",
            &raw.max_contacts,
            1,
            1000,
            d.max_contacts,
        ),
        max_aors: c.count(
            "[registrar] max_aors",
            &raw.max_aors,
            1,
            10_000_000,
            d.max_aors,
        ),
    };
    if let Some(v) = &raw.max_expires {
        if s.max_expires < s.min_expires {
            c.err(
                "[registrar] max_expires",
                v,
                "must not be below min_expires",
            );
        }
    }
    if let Some(v) = &raw.default_expires {
        if !(s.min_expires..=s.max_expires).contains(&s.default_expires) {
            c.err(
                "[registrar] default_expires",
                v,
                "must be between min_expires and max_expires",
            );
        }
    }
    s
}

/// `[digest]` and its `[[digest.users]]`: users are kept as H(A1) only.
fn digest_settings(c: &mut Check<'_>, raw: &RawDigest) -> DigestSettings {
    let defaults = DigestSettings::default();
    let mut algorithms = Vec::new();
    if let Some(list) = &raw.algorithms {
        for (i, a) in list.get_ref().iter().enumerate() {
            match Algorithm::parse(a.get_ref()) {
                Some(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
                Some(_) => c.err(&format!("[digest] algorithms[{i}]"), a, "is listed twice"),
                None => c.err(
                    &format!("[digest] algorithms[{i}]"),
                    a,
                    format!("{:?} is not one of \"SHA-256\", \"MD5\"", a.get_ref()),
                ),
            }
        }
        if list.get_ref().is_empty() {
            c.err(
                "[digest] algorithms",
                list,
                "must name at least one algorithm",
            );
        }
    }
    if algorithms.is_empty() {
        algorithms = defaults.algorithms.clone();
    }
    let mut users = HashMap::new();
    for (i, spanned) in raw.users.iter().enumerate() {
        let key = format!("[[digest.users]] #{}", i + 1);
        let u = spanned.get_ref();
        let mut field = |name: &str, v: &Option<String>| match v.as_deref() {
            Some(s) if !s.is_empty() && !s.contains(['\r', '\n', '"', '\\']) => Some(s.to_string()),
            Some(_) => {
                c.err(
                    &format!("{key} {name}"),
                    spanned,
                    "must be one line without quotes",
                );
                None
            }
            None => {
                c.err(&format!("{key} {name}"), spanned, "is required");
                None
            }
        };
        let (Some(realm), Some(username)) =
            (field("realm", &u.realm), field("username", &u.username))
        else {
            continue;
        };
        let hex_of = |c: &mut Check<'_>, name: &str, v: &Option<String>, len: usize| {
            let v = v.as_ref()?;
            if v.len() == len && v.bytes().all(|b| b.is_ascii_hexdigit()) {
                Some(v.to_ascii_lowercase())
            } else {
                c.err(
                    &format!("{key} {name}"),
                    spanned,
                    format!("must be {len} hexadecimal digits (H(username:realm:password))"),
                );
                None
            }
        };
        let md5 = hex_of(c, "ha1_md5", &u.ha1_md5, 32);
        let sha256 = hex_of(c, "ha1_sha256", &u.ha1_sha256, 64);
        let given_ha1 = u.ha1_md5.is_some() || u.ha1_sha256.is_some();
        let stored = match password(c, &key, &u.password, &u.password_file) {
            Err(()) => continue,
            Ok(Some(p)) if !given_ha1 => StoredUser::from_password(&realm, &username, &p),
            Ok(None) if given_ha1 => {
                if md5.is_none() && sha256.is_none() {
                    continue;
                }
                StoredUser::from_ha1(md5, sha256)
            }
            _ => {
                c.err(
                    &key,
                    spanned,
                    "needs exactly one of password, password_file, or ha1_md5/ha1_sha256",
                );
                continue;
            }
        };
        if users
            .insert((realm.clone(), username.clone()), stored)
            .is_some()
        {
            c.err(
                &key,
                spanned,
                format!("user {username:?} is already defined in realm {realm:?}"),
            );
        }
    }
    DigestSettings {
        algorithms,
        nonce_lifetime: c.duration(
            "[digest] nonce_lifetime",
            &raw.nonce_lifetime,
            defaults.nonce_lifetime,
        ),
        ban_after: c.count(
            "[digest] ban_after",
            &raw.ban_after,
            1,
            1_000_000,
            defaults.ban_after as usize,
        ) as u32,
        ban_window: c.duration("[digest] ban_window", &raw.ban_window, defaults.ban_window),
        ban_time: c.duration("[digest] ban_time", &raw.ban_time, defaults.ban_time),
        secret: [0; 32],
        users,
        provisioned: defaults.provisioned,
    }
}

/// `[acl]`: `NAME = ["CIDR", …]` lists (a bare address is a /32 or /128).
fn acls(
    c: &mut Check<'_>,
    raw: &BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
) -> BTreeMap<String, Vec<IpNet>> {
    let mut out = BTreeMap::new();
    for (name, list) in raw {
        let mut nets = Vec::new();
        for (i, item) in list.get_ref().iter().enumerate() {
            let text = item.get_ref().trim();
            let net = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
            match net {
                Ok(n) => nets.push(n.trunc()),
                Err(_) => c.err(
                    &format!("[acl] {name}[{i}]"),
                    item,
                    format!("{text:?} is not an address range such as \"192.0.2.0/24\""),
                ),
            }
        }
        out.insert(name.clone(), nets);
    }
    out
}

/// Plugin names become file names (`NAME.wasm`) and metric labels.
pub fn valid_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn parse_listen(s: &str) -> Result<(Transport, SocketAddr), String> {
    let (proto, addr) = s.split_once(':').ok_or_else(|| {
        format!("\"{s}\" is not \"udp:IP:PORT\", \"tcp:IP:PORT\" or \"tls:IP:PORT\"")
    })?;
    let transport = match proto {
        "udp" => Transport::Udp,
        "tcp" => Transport::Tcp,
        "tls" => Transport::Tls,
        other => {
            return Err(format!(
                "\"{other}\" is not a transport (use udp, tcp or tls)"
            ))
        }
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("\"{addr}\" is not IP:PORT (IPv6 in brackets: [::1]:5060)"))?;
    if addr.port() == 0 {
        return Err(format!("\"{s}\" needs a port"));
    }
    Ok((transport, addr))
}

fn parse_advertise(s: &str) -> Result<(String, Option<u16>), String> {
    let bad = || format!("\"{s}\" is not a host or host:port");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse::<u16>().map_err(|_| bad())?),
            None if after.is_empty() => None,
            None => return Err(bad()),
        };
        (format!("[{h}]"), port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => {
                (h.to_string(), Some(p.parse::<u16>().map_err(|_| bad())?))
            }
            Some(_) => return Err(format!("\"{s}\": write IPv6 addresses in brackets")),
            None => (s.to_string(), None),
        }
    };
    weir_sip::uri::parse_host(&host).map_err(|_| bad())?;
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_is_valid_and_loopback_only() {
        let c = parse(EMBEDDED_DEFAULT).unwrap();
        assert_eq!(c.listen.len(), 2);
        assert!(c.listen.iter().all(|(_, a)| a.ip().is_loopback()));
        assert_eq!(c.fallback, Fallback::RequestUri);
        assert_eq!(c.timers, Timers::default());
    }

    #[test]
    fn every_key_of_the_example_is_known() {
        // deny_unknown_fields would reject a key the example documents but the
        // code does not read; and each documented key is set in the example.
        for key in [
            "listen",
            "aliases",
            "record_route",
            "t1",
            "t2",
            "t4",
            "max_message_size",
            "udp_max",
            "forward_stray_responses",
            "server_name",
            "fallback",
            "ring_timeout",
            "tcp_idle_timeout",
            "tcp_connect_timeout",
            "max_connections",
            "max_connections_per_source",
            "udp_receive_buffer",
            "level",
            "format",
            "advertise",
            "certificate",
            "private_key",
            "ca_file",
            "handshake_timeout",
        ] {
            assert!(
                EMBEDDED_DEFAULT.contains(&format!("{key} =")),
                "{key} is not documented"
            );
        }
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let text = "[sip]\nlisten = [\"udp:127.0.0.1:5060\",\n  \"udpp:1.2.3.4:5\"]\nt1 = \"fast\"\n[routing]\nfallback = \"maybe\"\n";
        let errs = parse(text).unwrap_err();
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(errs.len(), 3, "{shown:?}");
        assert_eq!(errs[0].key, "[sip] listen[1]");
        assert_eq!(errs[0].line, Some(3));
        assert_eq!(errs[1].key, "[sip] t1");
        assert_eq!(errs[1].line, Some(4));
        assert_eq!(errs[2].key, "[routing] fallback");
        assert_eq!(errs[2].line, Some(6));
        assert!(shown[2].contains("\"request-uri\""), "{}", shown[2]);
    }

    #[test]
    fn upstream_registrations_name_their_credential_and_bad_keys() {
        let cfg = parse(
            "[credentials.c]\nusername = \"u\"\npassword = \"p\"\n\
             [[registrations]]\nregistrar = \"sip:sip.carrier.example;transport=tls\"\n\
             aor = \"sip:+14155550100@carrier.example\"\ncredential = \"c\"\nexpires = \"10m\"\n",
        )
        .unwrap();
        let r = &cfg.registrations[0];
        assert_eq!(
            r.name, "sip:+14155550100@carrier.example",
            "named by its aor"
        );
        assert_eq!(r.expires, Duration::from_secs(600));
        assert_eq!(r.credential.as_ref().unwrap().username, "u");
        assert_eq!(cfg.proxy_config().registrations.len(), 1);
        let errs = parse(
            "[[registrations]]\nregistrar = \"http://x\"\naor = \"sip:a@b\"\ncredential = \"nope\"\n\
             [[registrations]]\naor = \"sip:a@b\"\nexpires = \"2d\"\n\
             [[registrations]]\nregistrar = \"sip:r\"\naor = \"sip:a@b\"\n\
             [[registrations]]\nregistrar = \"sip:r2\"\naor = \"sip:a@b\"\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "[[registrations]] #1 registrar",
                "[[registrations]] #1 credential",
                "[[registrations]] #2 registrar",
                "[[registrations]] #2 expires",
                "[[registrations]] #4 name"
            ],
            "{errs:?}"
        );
        assert!(
            errs[1].message.contains("[credentials.nope]"),
            "{}",
            errs[1]
        );
    }

    #[test]
    fn tls_files_are_checked_and_errors_name_the_key() {
        let dir = std::env::temp_dir().join(format!("weir-tlscfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = rcgen::generate_simple_self_signed(vec!["sip.test".to_string()]).unwrap();
        let (cert, key, junk) = (dir.join("c.pem"), dir.join("k.pem"), dir.join("junk.pem"));
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.key_pair.serialize_pem()).unwrap();
        std::fs::write(&junk, "hello\n").unwrap();
        let good = format!(
            "[sip]\nlisten = [\"tls:127.0.0.1:5061\"]\n[tls]\ncertificate = {:?}\nprivate_key = {:?}\nca_file = {:?}\n",
            cert.display().to_string(),
            key.display().to_string(),
            cert.display().to_string()
        );
        let cfg = parse(&good).unwrap();
        assert_eq!(cfg.tls.certificate, Some((cert.clone(), key.clone())));
        assert_eq!(cfg.tls.ca_file, Some(cert.clone()));
        assert_eq!(cfg.tls.handshake_timeout, Duration::from_secs(5));

        let keys = |text: &str| -> Vec<(String, String)> {
            parse(text)
                .unwrap_err()
                .into_iter()
                .map(|e| (e.key, e.message))
                .collect()
        };
        let e = keys("[sip]\nlisten = [\"tls:127.0.0.1:5061\"]\n");
        assert_eq!(e[0].0, "[sip] listen", "{e:?}");
        assert!(e[0].1.contains("[tls] certificate"), "{e:?}");
        let e = keys(&format!(
            "[tls]\ncertificate = {:?}\n",
            cert.display().to_string()
        ));
        assert_eq!(e[0].0, "[tls] private_key", "{e:?}");
        let e = keys(&format!(
            "[tls]\ncertificate = {:?}\nprivate_key = {:?}\nca_file = {:?}\nhandshake_timeout = \"soon\"\n",
            junk.display().to_string(),
            key.display().to_string(),
            junk.display().to_string()
        ));
        let named: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            named,
            [
                "[tls] certificate",
                "[tls] ca_file",
                "[tls] handshake_timeout"
            ],
            "{e:?}"
        );
        assert!(e[0].1.contains("junk.pem"), "{e:?}");
        let e = keys(&format!(
            "[tls]\ncertificate = {:?}\nprivate_key = {:?}\n",
            cert.display().to_string(),
            junk.display().to_string()
        ));
        assert_eq!(e[0].0, "[tls] private_key", "{e:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn credentials_take_a_password_or_a_file_and_never_show_it() {
        let dir = std::env::temp_dir().join(format!("weir-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "from-file\nignored\n").unwrap();
        let text = format!(
            "[credentials.\"trunk:a\"]\nusername = \"u1\"\npassword = \"p1\"\n\
[credentials.b]\nusername = \"u2\"\npassword_file = {:?}\n",
            file.display().to_string()
        );
        let cfg = parse(&text).unwrap();
        assert_eq!(cfg.credentials["trunk:a"].password, "p1");
        assert_eq!(cfg.credentials["b"].password, "from-file");
        assert_eq!(cfg.proxy_config().credentials.len(), 2);
        assert!(
            !format!("{cfg:?}").contains("p1"),
            "passwords stay out of Debug"
        );
        let errs = parse(
            "[credentials.c]\npassword = \"x\"\n[credentials.d]\nusername = \"u\"\n\
[credentials.e]\nusername = \"u\"\npassword_file = \"/nonexistent/pw\"\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "[credentials.c] username",
                "[credentials.d]",
                "[credentials.e] password_file"
            ]
        );
        assert!(errs[2].message.contains("/nonexistent/pw"), "{}", errs[2]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn digest_users_are_kept_as_ha1_and_bad_keys_are_named() {
        let dir = std::env::temp_dir().join(format!("weir-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "from-file\nignored\n").unwrap();
        let cfg = parse(&format!(
            "[digest]\nalgorithms = [\"MD5\"]\nnonce_lifetime = \"30s\"\nban_after = 3\n\
[[digest.users]]\nrealm = \"r\"\nusername = \"alice\"\npassword = \"secret\"\n\
[[digest.users]]\nrealm = \"r\"\nusername = \"bob\"\npassword_file = {:?}\n\
[[digest.users]]\nrealm = \"r\"\nusername = \"carol\"\nha1_md5 = \"{}\"\n",
            file.display().to_string(),
            weir_sip::digest::ha1(Algorithm::Md5, "carol", "r", "pw").to_uppercase(),
        ))
        .unwrap();
        let d = &cfg.digest;
        assert_eq!(d.algorithms, [Algorithm::Md5]);
        assert_eq!(d.nonce_lifetime, Duration::from_secs(30));
        assert_eq!(d.ban_after, 3);
        assert_eq!(
            d.users[&("r".to_string(), "alice".to_string())],
            StoredUser::from_password("r", "alice", "secret")
        );
        assert_eq!(
            d.users[&("r".to_string(), "bob".to_string())],
            StoredUser::from_password("r", "bob", "from-file")
        );
        assert_eq!(
            d.users[&("r".to_string(), "carol".to_string())],
            StoredUser::from_ha1(
                Some(weir_sip::digest::ha1(Algorithm::Md5, "carol", "r", "pw")),
                None
            )
        );
        assert!(!format!("{cfg:?}").contains("secret"));
        // Every proxy start draws its own nonce secret.
        assert_ne!(cfg.proxy_config().digest.secret, [0; 32]);
        let errs = parse(
            "[digest]\nalgorithms = [\"SHA-512\"]\nban_after = 0\nnonce_lifetime = \"soon\"\n\
[[digest.users]]\nusername = \"a\"\npassword = \"x\"\n\
[[digest.users]]\nrealm = \"r\"\nusername = \"b\"\n\
[[digest.users]]\nrealm = \"r\"\nusername = \"c\"\nha1_md5 = \"xyz\"\n\
[[digest.users]]\nrealm = \"r\"\nusername = \"d\"\npassword = \"x\"\nha1_md5 = \"00000000000000000000000000000000\"\n\
[[digest.users]]\nrealm = \"r\"\nusername = \"e\"\npassword = \"x\"\n\
[[digest.users]]\nrealm = \"r\"\nusername = \"e\"\npassword = \"y\"\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "[digest] algorithms[0]",
                "[digest] ban_after",
                "[digest] nonce_lifetime",
                "[[digest.users]] #1 realm",
                "[[digest.users]] #2",
                "[[digest.users]] #3 ha1_md5",
                "[[digest.users]] #4",
                "[[digest.users]] #6",
            ],
            "{errs:?}"
        );
    }

    #[test]
    fn acl_lists_and_the_global_source_filter() {
        let cfg = parse(
            "[sip]\naccept_from = [\"carriers\", \"agents\"]\n\
[acl]\ncarriers = [\"54.172.60.0/30\", \"54.244.51.1\"]\nagents = [\"10.1.2.3/8\", \"2001:db8::/32\"]\nunused = []\n",
        )
        .unwrap();
        let shown: Vec<String> = cfg
            .accept_from
            .as_ref()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "54.172.60.0/30",
                "54.244.51.1/32",
                "10.0.0.0/8",
                "2001:db8::/32"
            ]
        );
        assert_eq!(cfg.proxy_config().accept_from.unwrap().len(), 4);
        assert!(
            parse("").unwrap().accept_from.is_none(),
            "no filter by default"
        );
        let errs = parse(
            "[sip]\naccept_from = [\"carriers\", \"nope\"]\n[acl]\ncarriers = [\"54.172.60.0/33\", \"x\"]\n",
        )
        .unwrap_err();
        let keys: Vec<(&str, Option<usize>)> =
            errs.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert_eq!(
            keys,
            [
                ("[sip] accept_from[1]", Some(2)),
                ("[acl] carriers[0]", Some(4)),
                ("[acl] carriers[1]", Some(4)),
            ]
        );
    }

    #[test]
    fn unknown_keys_and_bad_types_are_reported_with_their_line() {
        let errs = parse("[sip]\nlisten = []\n\n[routing]\nfalback = \"reject\"\n").unwrap_err();
        assert_eq!(errs[0].line, Some(5));
        assert!(errs[0].message.contains("unknown field"), "{}", errs[0]);
        assert!(errs[0].key.contains("falback"));
        let errs = parse("[sip]\nudp_max = \"big\"\n").unwrap_err();
        assert_eq!(errs[0].line, Some(2));
    }

    #[test]
    fn ipv6_listen_and_advertise() {
        let c = parse("[sip]\nlisten = [\"udp:[::1]:5070\", \"tcp:[::1]:5070\"]\nadvertise = \"sip.example.com:5999\"\n").unwrap();
        assert_eq!(c.listen[0].1, "[::1]:5070".parse().unwrap());
        let p = c.proxy_config();
        assert_eq!(p.listeners[0].sent_by(), "sip.example.com:5999");
        assert!(
            parse("[sip]\nlisten = [\"udp:0.0.0.0:5060\"]\n").is_err(),
            "wildcard needs advertise"
        );
        assert!(
            parse("[sip]\nlisten = [\"udp:0.0.0.0:5060\"]\nadvertise = \"203.0.113.5\"\n").is_ok()
        );
        assert!(parse("[sip]\nadvertise = \"2001:db8::1\"\n").is_err());
        let c = parse("[sip]\naliases = [\"weir.example.com\", \"[2001:db8::1]:5070\"]\n").unwrap();
        assert_eq!(
            c.proxy_config().aliases,
            vec![
                ("weir.example.com".to_string(), None),
                ("[2001:db8::1]".to_string(), Some(5070))
            ]
        );
        let errs = parse("[sip]\naliases = [\"bad host!\"]\n").unwrap_err();
        assert_eq!(errs[0].key, "[sip] aliases[0]");
    }
}
