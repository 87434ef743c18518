//! Shared by the plugin end-to-end tests: weir with a plugin folder and an
//! admin API, SIPp UAS/UAC helpers, and a check that keeps the evidence.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use weir_e2e::{free_port, install_file, require, scenario, tempdir, Sipp, SippRun, Weir};

pub struct Setup {
    pub weir: Weir,
    pub proxy: u16,
    pub admin: SocketAddr,
    pub plugins: tempdir::Dir,
    pub dir: tempdir::Dir,
}

/// weir on UDP with `plugin_toml` (the [plugins.*] tables) and plugin files in a
/// fresh folder.
pub fn setup(files: &[(&str, Vec<u8>)], chain: &[&str], plugin_toml: &str) -> Setup {
    setup_with(files, chain, "", plugin_toml)
}

/// Like [`setup`], with more `[sip]` keys (`sip_toml`).
pub fn setup_with(
    files: &[(&str, Vec<u8>)],
    chain: &[&str],
    sip_toml: &str,
    plugin_toml: &str,
) -> Setup {
    require("sipp", "sip-tester");
    let plugins = tempdir::Dir::new("plugins");
    for (name, bytes) in files {
        install_file(plugins.path(), name, bytes);
    }
    let proxy = free_port();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let chain: Vec<String> = chain.iter().map(|c| format!("\"{c}\"")).collect();
    let config = format!(
        "[sip]\nlisten = [\"udp:127.0.0.1:{proxy}\"]\nt1 = \"100ms\"\n{sip_toml}\
         [plugins]\ndir = \"{}\"\nchain = [{}]\n{plugin_toml}\n\
         [admin]\nlisten = \"{admin}\"\n",
        plugins.path().display(),
        chain.join(", ")
    );
    let weir = Weir::start(&config, format!("127.0.0.1:{proxy}").parse().unwrap());
    Setup {
        weir,
        proxy,
        admin,
        plugins,
        dir: tempdir::Dir::new("plugins-e2e"),
    }
}

pub fn uas(s: &Setup, file: &str, port: u16, calls: u32, extra: &[&str], limit: Duration) -> Sipp {
    uas_filled(s, file, &[], port, calls, extra, limit)
}

/// A UAS whose scenario has placeholders.
pub fn uas_filled(
    s: &Setup,
    file: &str,
    fill: &[(&str, &str)],
    port: u16,
    calls: u32,
    extra: &[&str],
    limit: Duration,
) -> Sipp {
    let f = scenario(s.dir.path(), file, fill);
    let mut args = vec![
        "-sf".to_string(),
        f.display().to_string(),
        "-i".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-m".into(),
        calls.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    Sipp::spawn_for(s.dir.path(), &format!("uas-{port}"), &args, limit)
}

/// A UAC calling `sip:USER@weir` (the Request-URI names the proxy: only a plugin
/// can route it).
#[allow(clippy::too_many_arguments)]
pub fn uac(
    s: &Setup,
    file: &str,
    fill: &[(&str, &str)],
    user: &str,
    calls: u32,
    rate: u32,
    limit: Duration,
) -> Sipp {
    uac_to(
        s,
        &format!("127.0.0.1:{}", s.proxy),
        file,
        fill,
        user,
        calls,
        rate,
        limit,
    )
}

/// A UAC calling `sip:USER@TARGET` (another peer than weir: a carrier…).
#[allow(clippy::too_many_arguments)]
pub fn uac_to(
    s: &Setup,
    target: &str,
    file: &str,
    fill: &[(&str, &str)],
    user: &str,
    calls: u32,
    rate: u32,
    limit: Duration,
) -> Sipp {
    let f = scenario(s.dir.path(), file, fill);
    let port = free_port();
    let args = vec![
        "-sf".to_string(),
        f.display().to_string(),
        "-s".into(),
        user.into(),
        "-i".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        target.into(),
        "-m".into(),
        calls.to_string(),
        "-r".into(),
        rate.to_string(),
    ];
    Sipp::spawn_for(s.dir.path(), &format!("uac-{user}-{port}"), &args, limit)
}

pub fn check(s: &mut Setup, what: &str, run: &SippRun, calls: u64) {
    weir_e2e::check_run(&mut s.dir, &s.weir, what, run, calls);
}
