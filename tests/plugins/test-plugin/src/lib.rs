//! A plugin for Weir's tests. It forwards every request to `target` (or, when a
//! registry entry `call:USER` exists, there), stamping `X-Plugin-Version` with
//! the [`VERSION`] bytes, which tests patch in the built file to make new
//! versions without rebuilding. With `fault` set it misbehaves on every
//! `fault_every`-th request whose Request-URI user starts with `fault`:
//! `panic`, `loop` (never returns), `memory` (allocates until the cap), or
//! `bad-uri` / `bad-status` / `guarded` (answers the host cannot accept).
//! `fail_init = true` makes `init` refuse. `bench = true` reads ten headers and
//! forwards without editing (the benchmark's plugin). `media` (`pass`,
//! `relay`, `relay-srtp-caller`, `relay-srtp-callee`) is the forward's media
//! mode; with `srtp_only_if_offered = true` an SRTP mode applies only to
//! offers of SRTP (`Request::offers_srtp`), others are relayed plainly.

use std::hint::black_box;

use weir_sdk::{export_plugin, Config, Decision, Forward, Host, Media, Plugin, Reply, Request};

/// Patched by tests: same length, so the component stays valid.
pub static VERSION: &str = "weir-test-version-000";

#[derive(Debug)]
pub struct TestPlugin {
    target: String,
    fault: Option<String>,
    bench: bool,
    /// Headers the benchmark mode reads (up to ten).
    reads: u64,
    media: Media,
    srtp_only_if_offered: bool,
}

impl Plugin for TestPlugin {
    fn init(config: &Config, _host: &Host) -> Result<Self, String> {
        if config.bool_or("fail_init", false)? {
            return Err("asked to fail (fail_init = true)".into());
        }
        Ok(TestPlugin {
            target: config.str_or("target", "sip:uas@127.0.0.1:5080")?,
            fault: config.str("fault")?,
            bench: config.bool_or("bench", false)?,
            reads: config.u64_or("reads", 10)?,
            media: match config.str_or("media", "pass")?.as_str() {
                "pass" => Media::Pass,
                "relay" => Media::Relay,
                "relay-srtp-caller" => Media::RelaySrtpCaller,
                "relay-srtp-callee" => Media::RelaySrtpCallee,
                other => return Err(format!("media: {other:?} is not a media mode")),
            },
            srtp_only_if_offered: config.bool_or("srtp_only_if_offered", false)?,
        })
    }

    fn on_request(&mut self, req: &Request, host: &Host) -> Decision {
        if self.bench {
            return bench(req, &self.target, self.reads);
        }
        let user = req.request_user().unwrap_or_default();
        if user.starts_with("fault") {
            if let Some(f) = self.fault.as_deref() {
                return misbehave(f, req);
            }
        }
        let version = black_box(VERSION);
        if let Err(e) = req.set_header("X-Plugin-Version", version) {
            return Reply::new(500).reason(format!("stamp refused: {e}")).into();
        }
        let target = host
            .registry_get(&format!("call:{user}"))
            .unwrap_or_else(|| self.target.clone());
        let media = match self.media {
            Media::RelaySrtpCaller | Media::RelaySrtpCallee
                if self.srtp_only_if_offered && !req.offers_srtp() =>
            {
                Media::Relay
            }
            m => m,
        };
        Forward::to(target).media(media).into()
    }
}

/// Up to ten reads, as a real router might make, then a forward.
fn bench(req: &Request, target: &str, count: u64) -> Decision {
    let reads: [&dyn Fn() -> usize; 10] = [
        &|| req.method().len(),
        &|| req.request_user().map_or(0, |u| u.len()),
        &|| req.call_id().len(),
        &|| req.from_user().map_or(0, |u| u.len()),
        &|| req.to_user().map_or(0, |u| u.len()),
        &|| req.header("Via").map_or(0, |v| v.len()),
        &|| req.header("CSeq").map_or(0, |v| v.len()),
        &|| req.header("Contact").map_or(0, |v| v.len()),
        &|| req.header("X-Twilio-CallSid").map_or(0, |v| v.len()),
        &|| req.header("Max-Forwards").map_or(0, |v| v.len()),
    ];
    let n: usize = reads.iter().take(count as usize).map(|r| r()).sum();
    black_box(n);
    Forward::to(target).into()
}

fn misbehave(fault: &str, req: &Request) -> Decision {
    match fault {
        "panic" => panic!("asked to panic"),
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        "memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                black_box(&hoard);
            }
        }
        "bad-uri" => Forward::to("sip:@@not a uri").into(),
        "bad-status" => Reply::new(99).into(),
        "guarded" => {
            // The host refuses the edit (ignored here), then the answer is
            // impossible too: the request gets the plugin's failure policy.
            let _ = req.set_header("Via", "SIP/2.0/UDP evil.example.com");
            Reply::new(1000).into()
        }
        other => Reply::new(500)
            .reason(format!("unknown fault {other}"))
            .into(),
    }
}

export_plugin!(TestPlugin);
