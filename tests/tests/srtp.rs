//! SRTP terminated on one leg, end to end: a real SDES peer (baresip with
//! its `srtp` module, RTP/SAVP mandatory) calls through weir, which the
//! routing plugin asks to terminate SRTP on the caller's leg; the callee
//! (a SIPp UAS echoing what it hears) gets plain RTP. Every packet weir
//! takes from the caller must pass SRTP authentication, and the echo goes
//! back to baresip encrypted with weir's own key. And the other way round
//! with AEAD_AES_128_GCM (RFC 7714): weir offers a baresip callee GCM keys
//! of its own for audio from a plain SIPp caller.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{setup, uas_filled};
use weir_e2e::{
    baresip_config, free_port, free_ports, have, metric, plugin_wasm, scenario, Program, Sipp,
};

/// One baresip call at a time: two at once on two cores starve each
/// other's audio clock.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn baresip_speaks_srtp_to_weir_and_the_callee_hears_plain_rtp() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if !have("baresip") {
        eprintln!("SKIPPED: baresip is not installed (scripts/setup.sh test installs it)");
        return;
    }
    let uas_port = free_port();
    let relay = free_ports(40);
    let relay = relay + relay % 2;
    let s = setup(
        &[("test-plugin.wasm", plugin_wasm("test_plugin"))],
        &["test-plugin"],
        &format!(
            "[plugins.test-plugin]\ncapabilities = [\"registry\"]\n\
             [plugins.test-plugin.config]\ntarget = \"sip:callee@127.0.0.1:{uas_port}\"\n\
             media = \"relay-srtp-caller\"\nsrtp_only_if_offered = true\n\
             [media]\nmode = \"plugin\"\nport_range = \"{relay}-{}\"\n\
             srtp_over_plain_sip = true\n",
            relay + 37
        ),
    );
    let uas_media = free_ports(4);
    let uas = uas_filled(
        &s,
        "srtp-uas.xml",
        &[],
        uas_port,
        1,
        &[
            "-mi",
            "127.0.0.1",
            "-mp",
            &uas_media.to_string(),
            "-rtp_echo",
        ],
        Duration::from_secs(30),
    );
    let home = s.dir.path().join("alice");
    let rtp = free_ports(21);
    let sip = free_port();
    baresip_config(
        &home,
        sip,
        (rtp, rtp + 20),
        &format!(
            "<sip:alice@127.0.0.1>;outbound=\"sip:127.0.0.1:{}\";regint=0;mediaenc=srtp-mand",
            s.proxy
        ),
    );
    let config = std::fs::read_to_string(home.join("config")).unwrap();
    std::fs::write(
        home.join("config"),
        format!("{config}module\t\t\tsrtp.so\naudio_codecs\t\tpcmu\n"),
    )
    .unwrap();
    let home = home.display().to_string();
    let alice = Program::spawn(
        s.dir.path(),
        "alice",
        "baresip",
        &[
            "-f",
            &home,
            "-e",
            &format!("/dial sip:callee@127.0.0.1:{}", s.proxy),
            "-t",
            "6",
        ],
    );
    let a = alice.wait(Duration::from_secs(20));
    let uas = uas.wait(Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(1500));
    let relayed = metric(s.admin, "weir_media_packets_total");
    let refused = metric(s.admin, "weir_media_srtp_refused_total");
    let malformed = metric(s.admin, "weir_media_malformed_total");
    eprintln!("relayed {relayed} packets, SRTP refused {refused}, malformed {malformed}");
    let evidence = || {
        format!(
            "--- alice ---\n{}\n--- uas ---\n{}\n--- weir ---\n{}",
            a.output,
            uas.output,
            s.weir.log_text()
        )
    };
    assert!(a.output.contains("Call established"), "{}", evidence());
    let suite = a
        .output
        .lines()
        .find(|l| l.contains("SRTP is Enabled"))
        .unwrap_or_else(|| panic!("baresip did not enable SRTP:\n{}", evidence()));
    eprintln!("{suite}");
    // Several seconds of 20 ms packets each way: SRTP in from baresip and
    // its echo back, all authenticated, none refused.
    assert!(relayed >= 300, "{}", evidence());
    // baresip stops SRTP before the RTCP BYE it sends at hangup: that one
    // plain RTCP packet (48 bytes, no SRTCP trailer) is rightly refused.
    assert!(refused <= 1, "{}", evidence());
    // …and it heard weir's SRTP: its receive bitrate is not zero.
    let heard = a.output.split("audio=").skip(1).any(|s| {
        s.split_once('/')
            .is_some_and(|(_, rx)| rx.starts_with(|c: char| ('1'..='9').contains(&c)))
    });
    assert!(
        heard,
        "baresip received nothing it could decrypt:\n{}",
        evidence()
    );
    assert_eq!(malformed, 0, "{}", evidence());
    assert!(
        !a.output.to_ascii_lowercase().contains("unprotect"),
        "baresip could not decrypt weir's SRTP:\n{}",
        evidence()
    );
}

#[test]
fn weir_offers_a_baresip_callee_aes_gcm_and_the_plain_caller_is_heard() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if !have("baresip") {
        eprintln!("SKIPPED: baresip is not installed (scripts/setup.sh test installs it)");
        return;
    }
    let bob_sip = free_port();
    let relay = free_ports(40);
    let relay = relay + relay % 2;
    let mut s = setup(
        &[("test-plugin.wasm", plugin_wasm("test_plugin"))],
        &["test-plugin"],
        &format!(
            "[plugins.test-plugin]\ncapabilities = [\"registry\"]\n\
             [plugins.test-plugin.config]\ntarget = \"sip:bob@127.0.0.1:{bob_sip}\"\n\
             media = \"relay-srtp-callee\"\n\
             [media]\nmode = \"plugin\"\nport_range = \"{relay}-{}\"\n\
             srtp_over_plain_sip = true\nsrtp_suite = \"AEAD_AES_128_GCM\"\n",
            relay + 37
        ),
    );
    // Bob: baresip answering at once, SRTP mandatory.
    let home = s.dir.path().join("bob");
    let rtp = free_ports(21);
    baresip_config(
        &home,
        bob_sip,
        (rtp, rtp + 20),
        "<sip:bob@127.0.0.1>;regint=0;answermode=auto;mediaenc=srtp-mand",
    );
    let config = std::fs::read_to_string(home.join("config")).unwrap();
    std::fs::write(
        home.join("config"),
        format!("{config}module\t\t\tsrtp.so\n"),
    )
    .unwrap();
    let bob = Program::spawn(
        s.dir.path(),
        "bob",
        "baresip",
        &["-f", &home.display().to_string(), "-t", "16"],
    );
    std::thread::sleep(Duration::from_millis(800));
    // The caller: plain RTP, SIPp playing G.711 A-law and a DTMF digit.
    let uac_file = scenario(
        s.dir.path(),
        "media-uac.xml",
        &[
            ("@RELAY_PORTS@", "[0-9]+"),
            ("@MEDIA_IP@", "127.0.0.1"),
            ("@HOLD_MS@", "600"),
            ("@DTMF_PT@", ".*"),
        ],
    );
    let uac_media = free_ports(4);
    let uac = Sipp::spawn_for(
        s.dir.path(),
        "uac",
        &[
            "-sf".to_string(),
            uac_file.display().to_string(),
            "-s".into(),
            "bob".into(),
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            free_port().to_string(),
            "-mi".into(),
            "127.0.0.1".into(),
            "-mp".into(),
            uac_media.to_string(),
            format!("127.0.0.1:{}", s.proxy),
            "-m".into(),
            "1".into(),
        ],
        Duration::from_secs(30),
    );
    let uac = uac.wait(Duration::from_secs(30));
    let bob = bob.wait(Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1500));
    let relayed = metric(s.admin, "weir_media_packets_total");
    let refused = metric(s.admin, "weir_media_srtp_refused_total");
    eprintln!("relayed {relayed} packets, SRTP refused {refused}");
    common::check(&mut s, "the plain caller", &uac, 1);
    let evidence = || {
        format!(
            "--- bob ---\n{}\n--- uac ---\n{}\n--- weir ---\n{}",
            bob.output,
            uac.output,
            s.weir.log_text()
        )
    };
    assert!(
        bob.output
            .contains("SRTP is Enabled (cryptosuite=AEAD_AES_128_GCM)"),
        "bob did not take weir's GCM key:\n{}",
        evidence()
    );
    // The caller's 246 packets went to bob encrypted, and bob's own audio
    // (GCM from bob, checked and decrypted by weir) to the caller.
    assert!(relayed >= 400, "{}", evidence());
    assert!(refused <= 1, "{}", evidence());
    // baresip logs the stream established at the first packet its SRTP
    // layer let through, and each packet that failed to decrypt.
    assert!(
        bob.output.contains("incoming rtp for 'audio' established")
            && !bob.output.contains("failed to decrypt"),
        "bob could not decrypt weir's GCM:\n{}",
        evidence()
    );
}
