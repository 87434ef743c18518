//! SRTP and SRTCP (RFC 3711) for one direction of one leg, sans-IO: the
//! packets of a party that speaks SRTP are checked and decrypted
//! ([`Context::unprotect_rtp`]) or encrypted and signed
//! ([`Context::protect_rtp`]) in place.
//!
//! Suites: AES_CM_128_HMAC_SHA1_80 and _32 (RFC 4568 §6.2; SRTCP always
//! carries the 80-bit tag) and AEAD_AES_128_GCM (RFC 7714: the header is
//! the associated data, GCM's 16-byte tag replaces the HMAC). Session keys
//! come from the master key and salt by the AES-CM PRF of §4.3 with a key
//! derivation rate of 0 (GCM's 96-bit salt left-aligned in the PRF's 112
//! bits, RFC 7714 erratum 4938, as libsrtp does). Replay protection is
//! always on: a 64-packet window per SSRC (§3.3.2), and a packet is only
//! counted after its tag checked out.
//!
//! The primitives are RustCrypto's (`aes`, `ctr`, `hmac`, `sha1`,
//! `aes-gcm`): the same ones `webrtc-srtp` uses, without its tokio-based
//! session layer, which this crate must not depend on.

use std::collections::HashMap;

use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use aes::Aes128;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

use crate::crypto::{Crypto, Suite};

type Ctr = ctr::Ctr128BE<Aes128>;
type CtrCore = ctr::CtrCore<Aes128, ctr::flavors::Ctr128BE>;
type HmacSha1 = Hmac<Sha1>;

/// Why a packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    #[error("too short for SRTP")]
    TooShort,
    #[error("authentication failed")]
    Auth,
    #[error("replayed or too old")]
    Replay,
    #[error("suite not supported for termination: {0}")]
    Suite(&'static str),
    #[error("no key yet for this party's SRTP")]
    NoKey,
    #[error("the MKI names no key the relay has")]
    Mki,
    #[error("the key's lifetime is used up (it must be renewed)")]
    Expired,
    #[error("a sequence number already sent under this key (its keystream must not be reused)")]
    Reuse,
}

/// The most SSRCs one context follows (a leg has one or two; more is
/// someone spraying).
const MAX_SSRCS: usize = 32;
const SRTCP_TAG: usize = 10;
const GCM_TAG: usize = 16;

/// AES-CM session keys of RTP or RTCP (RFC 3711).
#[derive(Clone)]
struct Keys {
    cipher: Aes128,
    salt: [u8; 14],
    /// Keyed once; cloned per packet.
    auth: HmacSha1,
}

/// AES-GCM session key and salt of RTP or RTCP (RFC 7714).
#[derive(Clone)]
struct GcmKeys {
    aead: Aes128Gcm,
    salt: [u8; 12],
}

impl GcmKeys {
    /// The 12-byte IV: `00 00 | SSRC | word | low`, XORed with the salt;
    /// for SRTP the word is the ROC and `low` the sequence number (§8.1),
    /// for SRTCP zero and the 31-bit index (§9.1).
    fn iv(&self, ssrc: u32, word: u32, low: &[u8]) -> Nonce<aes_gcm::aead::consts::U12> {
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[6..10].copy_from_slice(&word.to_be_bytes());
        iv[12 - low.len()..].copy_from_slice(low);
        for (b, s) in iv.iter_mut().zip(self.salt) {
            *b ^= s;
        }
        iv.into()
    }
}

/// How one kind of packet (RTP or RTCP) is protected.
#[derive(Clone)]
enum Transform {
    Cm(Keys),
    Gcm(GcmKeys),
}

/// Highest index seen and which of the 64 below it arrived.
#[derive(Debug, Clone, Copy, Default)]
struct Replay {
    highest: u64,
    seen: u64,
    started: bool,
}

impl Replay {
    fn check(&self, index: u64) -> Result<(), SrtpError> {
        if !self.started || index > self.highest {
            return Ok(());
        }
        let behind = self.highest - index;
        if behind >= 64 || self.seen & (1 << behind) != 0 {
            return Err(SrtpError::Replay);
        }
        Ok(())
    }

    fn accept(&mut self, index: u64) {
        if !self.started {
            *self = Replay {
                highest: index,
                seen: 1,
                started: true,
            };
        } else if index > self.highest {
            let ahead = index - self.highest;
            self.seen = if ahead >= 64 { 0 } else { self.seen << ahead } | 1;
            self.highest = index;
        } else {
            self.seen |= 1 << (self.highest - index);
        }
    }
}

/// Per-SSRC RTP state: rollover counter, highest sequence number (§3.3.1).
#[derive(Debug, Clone, Copy, Default)]
struct Stream {
    roc: u32,
    s_l: u16,
    replay: Replay,
}

impl Stream {
    /// The ROC of a packet with sequence number `seq` (Appendix A).
    fn estimate(&self, seq: u16) -> u32 {
        if !self.replay.started {
            return self.roc;
        }
        if self.s_l < 32_768 {
            if seq > self.s_l && seq - self.s_l > 32_768 {
                self.roc.wrapping_sub(1)
            } else {
                self.roc
            }
        } else if self.s_l - 32_768 > seq {
            self.roc.wrapping_add(1)
        } else {
            self.roc
        }
    }

    fn update(&mut self, v: u32, seq: u16) {
        let index = (u64::from(v) << 16) | u64::from(seq);
        if !self.replay.started
            || v == self.roc.wrapping_add(1)
            || (v == self.roc && seq > self.s_l)
        {
            self.roc = v;
            self.s_l = seq;
        }
        self.replay.accept(index);
    }
}

/// One direction's SRTP and SRTCP state.
#[derive(Clone)]
pub struct Context {
    /// The SRTP tag's length (10 or 4 for HMAC-SHA1, 16 for GCM).
    tag_len: usize,
    /// The MKI every packet under this key carries (empty: none): before
    /// the HMAC tag, after GCM's (RFC 3711 §3.1, RFC 7714 §8.1 and §9.1).
    mki: Vec<u8>,
    /// SRTP and SRTCP packets the key may still protect or admit: fewer
    /// than its lifetime each (RFC 4568 §6.1), 2^48 and 2^31 by default
    /// (RFC 3711 §9.2).
    left_rtp: u64,
    left_rtcp: u64,
    rtp: Transform,
    rtcp: Transform,
    streams: HashMap<u32, Stream>,
    rtcp_replay: HashMap<u32, Replay>,
    /// Next SRTCP index per SSRC (sending).
    rtcp_index: HashMap<u32, u32>,
    /// The last RTP packet protected per SSRC, as it was before: the one
    /// packet that may be protected again (see `protect_rtp`).
    last_sent: HashMap<u32, Vec<u8>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("tag_len", &self.tag_len)
            .field("ssrcs", &self.streams.len())
            .finish_non_exhaustive()
    }
}

/// The AES-CM PRF of RFC 3711 §4.3.3 (kdr 0): `n` bytes for `label`. A
/// 12-byte (GCM) master salt is padded on the right to the PRF's 14.
fn derive(master: &Aes128, master_salt: &[u8], label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    let n = master_salt.len().min(14);
    iv[..n].copy_from_slice(&master_salt[..n]);
    iv[7] ^= label;
    out.fill(0);
    Ctr::from_core(CtrCore::inner_iv_init(master.clone(), &iv.into())).apply_keystream(out);
}

/// Session keys for labels (encryption, authentication, salt).
fn keys(master: &Aes128, salt: &[u8], labels: [u8; 3]) -> Keys {
    let (mut k, mut a, mut s) = ([0u8; 16], [0u8; 20], [0u8; 14]);
    derive(master, salt, labels[0], &mut k);
    derive(master, salt, labels[1], &mut a);
    derive(master, salt, labels[2], &mut s);
    Keys {
        cipher: Aes128::new(&k.into()),
        salt: s,
        // Any key length is valid for HMAC.
        auth: <HmacSha1 as Mac>::new_from_slice(&a).unwrap_or_else(|_| unreachable!()),
    }
}

/// GCM session key and salt for labels (encryption, salt); no
/// authentication key (GCM authenticates).
fn gcm_keys(master: &Aes128, salt: &[u8], labels: [u8; 2]) -> GcmKeys {
    let (mut k, mut s) = ([0u8; 16], [0u8; 12]);
    derive(master, salt, labels[0], &mut k);
    derive(master, salt, labels[1], &mut s);
    GcmKeys {
        aead: Aes128Gcm::new(&k.into()),
        salt: s,
    }
}

/// AES-CM (§4.1.1) over `data` for `ssrc` and 48-bit `index`.
fn crypt(keys: &Keys, ssrc: u32, index: u64, data: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(&keys.salt);
    for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
        *b ^= s;
    }
    for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
        *b ^= s;
    }
    Ctr::from_core(CtrCore::inner_iv_init(keys.cipher.clone(), &iv.into())).apply_keystream(data);
}

fn tag(keys: &Keys, parts: &[&[u8]]) -> [u8; 20] {
    let mut mac = keys.auth.clone();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// The RTP header's length (fixed part, CSRCs, extension), if it fits.
fn header_len(p: &[u8]) -> Option<usize> {
    if p.len() < 12 {
        return None;
    }
    let mut n = 12 + 4 * usize::from(p[0] & 0x0f);
    if p[0] & 0x10 != 0 {
        let ext = p.get(n + 2..n + 4)?;
        n += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    (n <= p.len()).then_some(n)
}

impl Context {
    /// A context for the key and salt of one `a=crypto` line.
    pub fn new(c: &Crypto) -> Result<Context, SrtpError> {
        let key: [u8; 16] = c
            .key
            .as_slice()
            .try_into()
            .map_err(|_| SrtpError::Suite(c.suite.name()))?;
        if c.salt.len() != c.suite.key_salt_len().1 {
            return Err(SrtpError::Suite(c.suite.name()));
        }
        let master = Aes128::new(&key.into());
        let (tag_len, rtp, rtcp) = match c.suite {
            Suite::AesCm128HmacSha1_80 | Suite::AesCm128HmacSha1_32 => (
                if c.suite == Suite::AesCm128HmacSha1_80 {
                    10
                } else {
                    4
                },
                Transform::Cm(keys(&master, &c.salt, [0, 1, 2])),
                Transform::Cm(keys(&master, &c.salt, [3, 4, 5])),
            ),
            Suite::AeadAes128Gcm => (
                GCM_TAG,
                Transform::Gcm(gcm_keys(&master, &c.salt, [0, 2])),
                Transform::Gcm(gcm_keys(&master, &c.salt, [3, 5])),
            ),
        };
        Ok(Context {
            tag_len,
            mki: c.mki.clone().unwrap_or_default(),
            left_rtp: c.lifetime.unwrap_or(1 << 48) - 1,
            // Past 2^31 the SRTCP index would wrap (its keystreams repeat).
            left_rtcp: c.lifetime.unwrap_or(1 << 31).min(1 << 31) - 1,
            rtp,
            rtcp,
            streams: HashMap::new(),
            rtcp_replay: HashMap::new(),
            rtcp_index: HashMap::new(),
            last_sent: HashMap::new(),
        })
    }

    /// The state of `ssrc`: a fresh one for an SSRC not heard yet, kept only
    /// once a packet of it checks out (forged SSRCs must not push out the
    /// real ones' rollover counters and replay windows).
    fn stream(&self, ssrc: u32) -> Stream {
        self.streams.get(&ssrc).copied().unwrap_or_default()
    }

    /// Keeps `ssrc`'s state after a packet of it went through (a full table
    /// starts afresh: a leg has one or two SSRCs).
    fn keep(&mut self, ssrc: u32, st: Stream) {
        if self.streams.len() >= MAX_SSRCS && !self.streams.contains_key(&ssrc) {
            self.streams.clear();
        }
        self.streams.insert(ssrc, st);
    }

    /// Refuses a packet once the key's lifetime is used up (for its kind).
    fn check_left(&self, rtcp: bool) -> Result<(), SrtpError> {
        let left = if rtcp { self.left_rtcp } else { self.left_rtp };
        if left == 0 {
            return Err(SrtpError::Expired);
        }
        Ok(())
    }

    /// One more packet of a kind under the key.
    fn count(&mut self, rtcp: bool) {
        let left = if rtcp {
            &mut self.left_rtcp
        } else {
            &mut self.left_rtp
        };
        *left = left.saturating_sub(1);
    }

    /// Encrypts an RTP packet in place and appends its tag.
    pub fn protect_rtp(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        let n = header_len(packet).ok_or(SrtpError::TooShort)?;
        self.check_left(false)?;
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        let mut st = self.stream(ssrc);
        let v = st.estimate(seq);
        let index = (u64::from(v) << 16) | u64::from(seq);
        // RFC 3711 §9.1: one index, one keystream. A sender that starts its
        // numbering again under the same SSRC (the relay keeps its key
        // across re-INVITEs) would have the relay encrypt two packets alike.
        // The same packet again is fine (the same bytes under the same
        // keystream tell nothing new): RFC 4733 senders resend an event's
        // end packet under one sequence number, and libsrtp-based ones
        // allow it for that (allow_repeat_tx).
        let again = self
            .last_sent
            .get(&ssrc)
            .is_some_and(|l| l[..] == packet[..]);
        if !again {
            st.replay.check(index).map_err(|_| SrtpError::Reuse)?;
        }
        if self.last_sent.len() >= MAX_SSRCS && !self.last_sent.contains_key(&ssrc) {
            self.last_sent.clear();
        }
        let last = self.last_sent.entry(ssrc).or_default();
        last.clear();
        last.extend_from_slice(packet);
        match &self.rtp {
            Transform::Cm(k) => {
                crypt(k, ssrc, index, &mut packet[n..]);
                let t = tag(k, &[packet, &v.to_be_bytes()]);
                packet.extend_from_slice(&self.mki);
                packet.extend_from_slice(&t[..self.tag_len]);
            }
            Transform::Gcm(g) => {
                let (header, payload) = packet.split_at_mut(n);
                let t = g
                    .aead
                    .encrypt_in_place_detached(&g.iv(ssrc, v, &seq.to_be_bytes()), header, payload)
                    .map_err(|_| SrtpError::TooShort)?;
                packet.extend_from_slice(&t);
                packet.extend_from_slice(&self.mki);
            }
        }
        st.update(v, seq);
        self.keep(ssrc, st);
        self.count(false);
        Ok(())
    }

    /// Checks an SRTP packet's tag and freshness, then decrypts it in place
    /// (the tag removed). Nothing is counted for a packet that fails.
    pub fn unprotect_rtp(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        // `len`: the end of what is authenticated (and kept).
        let len = packet
            .len()
            .checked_sub(self.tag_len + self.mki.len())
            .ok_or(SrtpError::TooShort)?;
        let n = header_len(&packet[..len]).ok_or(SrtpError::TooShort)?;
        let (mki_at, tag_at) = match self.rtp {
            Transform::Cm(_) => (len, len + self.mki.len()),
            Transform::Gcm(_) => (len + self.tag_len, len),
        };
        if packet[mki_at..mki_at + self.mki.len()] != self.mki[..] {
            return Err(SrtpError::Mki);
        }
        self.check_left(false)?;
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        let mut st = self.stream(ssrc);
        let v = st.estimate(seq);
        let index = (u64::from(v) << 16) | u64::from(seq);
        st.replay.check(index)?;
        match &self.rtp {
            Transform::Cm(k) => {
                let t = tag(k, &[&packet[..len], &v.to_be_bytes()]);
                let theirs = &packet[tag_at..tag_at + self.tag_len];
                if !bool::from(t[..self.tag_len].ct_eq(theirs)) {
                    return Err(SrtpError::Auth);
                }
                packet.truncate(len);
                crypt(k, ssrc, index, &mut packet[n..]);
            }
            Transform::Gcm(g) => {
                let (header, rest) = packet.split_at_mut(n);
                let (payload, rest) = rest.split_at_mut(len - n);
                let t = &rest[..self.tag_len];
                let iv = g.iv(ssrc, v, &seq.to_be_bytes());
                g.aead
                    .decrypt_in_place_detached(&iv, header, payload, Tag::from_slice(t))
                    .map_err(|_| SrtpError::Auth)?;
                packet.truncate(len);
            }
        }
        st.update(v, seq);
        self.keep(ssrc, st);
        self.count(false);
        Ok(())
    }

    /// Encrypts an RTCP compound packet in place, appends E‖index and the
    /// 80-bit tag (§3.4).
    pub fn protect_rtcp(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        if packet.len() < 8 {
            return Err(SrtpError::TooShort);
        }
        self.check_left(true)?;
        let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        if self.rtcp_index.len() >= MAX_SSRCS && !self.rtcp_index.contains_key(&ssrc) {
            self.rtcp_index.clear();
        }
        let next = self.rtcp_index.entry(ssrc).or_insert(0);
        let index = *next & 0x7fff_ffff;
        *next = next.wrapping_add(1) & 0x7fff_ffff;
        let e_index = (0x8000_0000 | index).to_be_bytes();
        match &self.rtcp {
            Transform::Cm(k) => {
                crypt(k, ssrc, u64::from(index), &mut packet[8..]);
                packet.extend_from_slice(&e_index);
                let t = tag(k, &[packet]);
                packet.extend_from_slice(&self.mki);
                packet.extend_from_slice(&t[..SRTCP_TAG]);
            }
            // RFC 7714 §9: header ‖ ciphertext ‖ tag ‖ E‖index, the first
            // 8 bytes and E‖index authenticated.
            Transform::Gcm(g) => {
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(&packet[..8]);
                aad[8..].copy_from_slice(&e_index);
                let t = g
                    .aead
                    .encrypt_in_place_detached(
                        &g.iv(ssrc, 0, &index.to_be_bytes()),
                        &aad,
                        &mut packet[8..],
                    )
                    .map_err(|_| SrtpError::TooShort)?;
                packet.extend_from_slice(&t);
                packet.extend_from_slice(&e_index);
                packet.extend_from_slice(&self.mki);
            }
        }
        self.count(true);
        Ok(())
    }

    /// Checks and decrypts an SRTCP packet in place (trailer removed).
    pub fn unprotect_rtcp(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        // The trailer: E‖index, the MKI if any, then the tag (AES-CM); or
        // the tag, E‖index, then the MKI (GCM).
        let (tag_len, index_at) = match &self.rtcp {
            Transform::Cm(_) => (SRTCP_TAG, 0),
            Transform::Gcm(_) => (GCM_TAG, GCM_TAG),
        };
        let m = self.mki.len();
        let len = packet
            .len()
            .checked_sub(tag_len + 4 + m)
            .filter(|&l| l >= 8)
            .ok_or(SrtpError::TooShort)?;
        let mki_at = len + index_at + 4;
        if packet[mki_at..mki_at + m] != self.mki[..] {
            return Err(SrtpError::Mki);
        }
        self.check_left(true)?;
        let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let at = len + index_at;
        let e_index =
            u32::from_be_bytes([packet[at], packet[at + 1], packet[at + 2], packet[at + 3]]);
        let encrypted = e_index & 0x8000_0000 != 0;
        let index = u64::from(e_index & 0x7fff_ffff);
        let mut replay = self.rtcp_replay.get(&ssrc).copied().unwrap_or_default();
        replay.check(index)?;
        match &self.rtcp {
            Transform::Cm(k) => {
                let t = tag(k, &[&packet[..len + 4]]);
                if !bool::from(t[..SRTCP_TAG].ct_eq(&packet[len + 4 + m..])) {
                    return Err(SrtpError::Auth);
                }
                packet.truncate(len);
                if encrypted {
                    crypt(k, ssrc, index, &mut packet[8..]);
                }
            }
            Transform::Gcm(g) => {
                let iv = g.iv(ssrc, 0, &(index as u32).to_be_bytes());
                let (body, trailer) = packet.split_at_mut(len);
                let t = Tag::from_slice(&trailer[..GCM_TAG]);
                let e = e_index.to_be_bytes();
                let checked = if encrypted {
                    let (header, payload) = body.split_at_mut(8);
                    let mut aad = [0u8; 12];
                    aad[..8].copy_from_slice(header);
                    aad[8..].copy_from_slice(&e);
                    g.aead.decrypt_in_place_detached(&iv, &aad, payload, t)
                } else {
                    // Authenticated only: the whole packet is associated data.
                    let aad = [&body[..], &e].concat();
                    g.aead.decrypt_in_place_detached(&iv, &aad, &mut [], t)
                };
                checked.map_err(|_| SrtpError::Auth)?;
                packet.truncate(len);
            }
        }
        replay.accept(index);
        if self.rtcp_replay.len() >= MAX_SSRCS && !self.rtcp_replay.contains_key(&ssrc) {
            self.rtcp_replay.clear();
        }
        self.rtcp_replay.insert(ssrc, replay);
        self.count(true);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn rfc3711_b3_key_derivation() {
        let master = Aes128::new_from_slice(&hex("E1F97A0D3E018BE0D64FA32C06DE4139")).unwrap();
        let salt = hex("0EC675AD498AFEEBB6960B3AABE6");
        let mut k = [0u8; 16];
        derive(&master, &salt, 0, &mut k);
        assert_eq!(k.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut s = [0u8; 14];
        derive(&master, &salt, 2, &mut s);
        assert_eq!(s.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut a = [0u8; 20];
        derive(&master, &salt, 1, &mut a);
        assert_eq!(a.to_vec(), hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4"));
    }

    #[test]
    fn rfc3711_b2_aes_cm_keystream() {
        // Session key and salt of B.2; SSRC, ROC and SEQ zero: the keystream
        // is what encrypting zeros gives.
        let k = Keys {
            cipher: Aes128::new_from_slice(&hex("2B7E151628AED2A6ABF7158809CF4F3C")).unwrap(),
            salt: hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD").try_into().unwrap(),
            auth: <HmacSha1 as Mac>::new_from_slice(b"x").unwrap(),
        };
        let mut z = vec![0u8; 48];
        // (b.2's keys are session keys: no derivation.)
        crypt(&k, 0, 0, &mut z);
        assert_eq!(
            z,
            hex("E03EAD0935C95E80E166B16DD92B4EB4 D23513162B02D0F72A43A2FE4A5F97AB 41E95B3BB0A2E8DD477901E4FCA894C0")
        );
    }

    fn crypto(suite: Suite, seed: u8) -> Crypto {
        Crypto::generate(1, suite, |b| {
            for (i, x) in b.iter_mut().enumerate() {
                *x = seed.wrapping_add(i as u8);
            }
        })
    }

    fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 160, 0, 0, 0, 0];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn a_round_trip_rejects_tampering_and_replays() {
        for suite in [
            Suite::AesCm128HmacSha1_80,
            Suite::AesCm128HmacSha1_32,
            Suite::AeadAes128Gcm,
        ] {
            let c = crypto(suite, 7);
            let (mut tx, mut rx) = (Context::new(&c).unwrap(), Context::new(&c).unwrap());
            let plain = rtp(65_534, 0x1234_5678, b"hello, audio");
            let mut sent = Vec::new();
            // Across a sequence number wrap (the ROC moves on).
            for i in 0..4u16 {
                let mut p = rtp(65_534u16.wrapping_add(i), 0x1234_5678, b"hello, audio");
                tx.protect_rtp(&mut p).unwrap();
                assert_ne!(&p[12..24], b"hello, audio", "encrypted");
                sent.push(p);
            }
            for p in &sent {
                let mut q = p.clone();
                rx.unprotect_rtp(&mut q).unwrap();
                assert_eq!(&q[12..], &plain[12..]);
            }
            // The same packet again: a replay.
            let mut again = sent[3].clone();
            assert_eq!(rx.unprotect_rtp(&mut again), Err(SrtpError::Replay));
            // One bit flipped in the payload: refused, and not counted.
            let mut next = rtp(2, 0x1234_5678, b"hello, audio");
            tx.protect_rtp(&mut next).unwrap();
            let mut bad = next.clone();
            bad[14] ^= 1;
            assert_eq!(rx.unprotect_rtp(&mut bad), Err(SrtpError::Auth));
            rx.unprotect_rtp(&mut next).unwrap();
            // Another key: refused.
            let mut other = Context::new(&crypto(suite, 9)).unwrap();
            let mut p = rtp(3, 0x1234_5678, b"x");
            other.protect_rtp(&mut p).unwrap();
            assert_eq!(rx.unprotect_rtp(&mut p), Err(SrtpError::Auth));
            assert!(rx.unprotect_rtp(&mut vec![0x80; 5]).is_err());
        }
    }

    /// A GCM context on RFC 7714's session key and salt, used directly.
    fn rfc7714_session() -> Context {
        let g = GcmKeys {
            aead: Aes128Gcm::new_from_slice(&hex("000102030405060708090a0b0c0d0e0f")).unwrap(),
            salt: hex("517569642070726f2071756f").try_into().unwrap(),
        };
        Context {
            tag_len: GCM_TAG,
            mki: Vec::new(),
            left_rtp: u64::MAX,
            left_rtcp: u64::MAX,
            rtp: Transform::Gcm(g.clone()),
            rtcp: Transform::Gcm(g),
            streams: HashMap::new(),
            rtcp_replay: HashMap::new(),
            rtcp_index: HashMap::new(),
            last_sent: HashMap::new(),
        }
    }

    #[test]
    fn rfc7714_aes_128_gcm_srtp_and_srtcp_vectors() {
        // SRTP: SSRC 5501a0b2, SEQ f17b, ROC 0.
        let plain = hex(
            "8040f17b8041f8d35501a0b247616c6c696120657374206f6d6e697320646976\
             69736120696e207061727465732074726573",
        );
        let protected = hex(
            "8040f17b8041f8d35501a0b2f24de3a3fb34de6cacba861c9d7e4bcabe633bd5\
             0d294e6f42a5f47a51c7d19b36de3adf8833899d7f27beb16a9152cf765ee439\
             0cce",
        );
        let mut p = plain.clone();
        rfc7714_session().protect_rtp(&mut p).unwrap();
        assert_eq!(p, protected);
        let mut rx = rfc7714_session();
        rx.unprotect_rtp(&mut p).unwrap();
        assert_eq!(p, plain);
        // SRTCP: sender SSRC "Mars", index 5d4, encrypted (E = 1).
        let rtcp = hex(
            "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61\
             deadbeefdeadbeefdeadbeefdeadbeefdeadbeef",
        );
        let srtcp = hex(
            "81c8000d4d61727363e94885dcdab67ca727d7662f6b7e997ff5c0f76c06f32d\
             c676a5f1730d6fda4ce09b4686303ded0bb9275bc84aa45896cf4d2fc5abf872\
             45d9eade800005d4",
        );
        let mut tx = rfc7714_session();
        tx.rtcp_index.insert(0x4d61_7273, 0x5d4);
        let mut p = rtcp.clone();
        tx.protect_rtcp(&mut p).unwrap();
        assert_eq!(p, srtcp);
        let mut rx = rfc7714_session();
        rx.unprotect_rtcp(&mut p).unwrap();
        assert_eq!(p, rtcp);
        // The same report authenticated only (E = 0): the tag covers it all.
        let mut auth_only = hex(
            "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61\
             deadbeefdeadbeefdeadbeefdeadbeefdeadbeef841dd9683dd78ec92ae58790\
             125f62b3000005d4",
        );
        rfc7714_session().unprotect_rtcp(&mut auth_only).unwrap();
        assert_eq!(auth_only, rtcp);
    }

    #[test]
    fn gcm_master_keys_are_derived_with_the_salt_left_aligned() {
        // A master key and 96-bit salt, as SDES carries them; the expected
        // packets are those libsrtp-compatible stacks produce.
        let c = Crypto {
            tag: 1,
            suite: Suite::AeadAes128Gcm,
            key: hex("000102030405060708090a0b0c0d0e0f"),
            salt: hex("a0a1a2a3a4a5a6a7a8a9aaab"),
            lifetime: None,
            mki: None,
        };
        let plain = hex("800f1234decafbadcafebabeabababababababababababababababab");
        let mut p = plain.clone();
        Context::new(&c).unwrap().protect_rtp(&mut p).unwrap();
        assert_eq!(
            p,
            hex("800f1234decafbadcafebabec5002ede04cfdd2eb91159e0880aa06ed2976826f796b201df3131a127e8a392")
        );
        let rtcp = hex("81c8000bcafebabeabababababababababababababababab");
        let mut srtcp = hex(
            "81c8000bcafebabec98b8b5df0392a55852b6c21ac8e7025c52c6fbea2b3b446ea31123ba88ce61e80000001",
        );
        let mut tx = Context::new(&c).unwrap();
        tx.rtcp_index.insert(0xcafe_babe, 1);
        let mut q = rtcp.clone();
        tx.protect_rtcp(&mut q).unwrap();
        assert_eq!(q, srtcp);
        Context::new(&c)
            .unwrap()
            .unprotect_rtcp(&mut srtcp)
            .unwrap();
        assert_eq!(srtcp, rtcp);
    }

    #[test]
    fn srtcp_round_trip_with_replay_protection() {
        for suite in [Suite::AesCm128HmacSha1_32, Suite::AeadAes128Gcm] {
            srtcp_round_trip(suite);
        }
    }

    fn srtcp_round_trip(suite: Suite) {
        let c = crypto(suite, 3);
        let (mut tx, mut rx) = (Context::new(&c).unwrap(), Context::new(&c).unwrap());
        // A receiver report: header and sender SSRC, then a report block.
        let rr = [
            0x81, 201, 0, 7, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let mut p = rr.to_vec();
        tx.protect_rtcp(&mut p).unwrap();
        let tag = if suite == Suite::AeadAes128Gcm {
            16
        } else {
            10
        };
        assert_eq!(p.len(), rr.len() + 4 + tag, "E|index and the tag");
        let copy = p.clone();
        rx.unprotect_rtcp(&mut p).unwrap();
        assert_eq!(p, rr);
        assert_eq!(rx.unprotect_rtcp(&mut copy.clone()), Err(SrtpError::Replay));
        let mut bad = rr.to_vec();
        tx.protect_rtcp(&mut bad).unwrap();
        bad[9] ^= 0x40;
        assert_eq!(rx.unprotect_rtcp(&mut bad), Err(SrtpError::Auth));
    }

    #[test]
    fn an_mki_sits_where_rfc_3711_and_7714_put_it_unauthenticated() {
        for suite in [
            Suite::AesCm128HmacSha1_80,
            Suite::AesCm128HmacSha1_32,
            Suite::AeadAes128Gcm,
        ] {
            let plain = crypto(suite, 7);
            let with_mki = Crypto {
                mki: Some(vec![0, 0, 0, 1]),
                ..plain.clone()
            };
            let tag = match suite {
                Suite::AesCm128HmacSha1_80 => 10,
                Suite::AesCm128HmacSha1_32 => 4,
                Suite::AeadAes128Gcm => 16,
            };
            let gcm = suite == Suite::AeadAes128Gcm;
            let (mut tx, mut rx) = (
                Context::new(&with_mki).unwrap(),
                Context::new(&with_mki).unwrap(),
            );
            let mut reference = Context::new(&plain).unwrap();
            // SRTP: the MKI before the HMAC tag, after GCM's; the same
            // packet as without it otherwise (neither encrypted nor
            // authenticated).
            let audio = rtp(9, 0xabcd, b"hello, audio");
            let (mut p, mut r) = (audio.clone(), audio.clone());
            tx.protect_rtp(&mut p).unwrap();
            reference.protect_rtp(&mut r).unwrap();
            let at = if gcm { r.len() } else { r.len() - tag };
            assert_eq!(p.len(), r.len() + 4);
            assert_eq!(&p[at..at + 4], &[0, 0, 0, 1], "{suite:?}");
            assert_eq!([&p[..at], &p[at + 4..]].concat(), r, "{suite:?}");
            // Another MKI names another key: refused, the packet untouched.
            let mut other = p.clone();
            other[at + 3] = 2;
            let copy = other.clone();
            assert_eq!(rx.unprotect_rtp(&mut other), Err(SrtpError::Mki));
            assert_eq!(other, copy);
            rx.unprotect_rtp(&mut p).unwrap();
            assert_eq!(p, audio);
            // SRTCP: after E‖index, before the tag (after GCM's tag and
            // E‖index).
            let rr = [0x81, 201, 0, 1, 0xde, 0xad, 0xbe, 0xef];
            let (mut p, mut r) = (rr.to_vec(), rr.to_vec());
            tx.protect_rtcp(&mut p).unwrap();
            reference.protect_rtcp(&mut r).unwrap();
            let at = if gcm { r.len() } else { r.len() - 10 };
            assert_eq!(&p[at..at + 4], &[0, 0, 0, 1], "{suite:?}");
            assert_eq!([&p[..at], &p[at + 4..]].concat(), r, "{suite:?}");
            let mut other = p.clone();
            other[at] = 9;
            assert_eq!(rx.unprotect_rtcp(&mut other), Err(SrtpError::Mki));
            rx.unprotect_rtcp(&mut p).unwrap();
            assert_eq!(p, rr);
            // Without an MKI the last bytes would be read as tag: refused.
            let mut r2 = rr.to_vec();
            reference.protect_rtcp(&mut r2).unwrap();
            assert!(rx.unprotect_rtcp(&mut r2).is_err());
        }
    }

    #[test]
    fn no_index_is_encrypted_twice_under_one_key() {
        let c = crypto(Suite::AesCm128HmacSha1_80, 4);
        let mut tx = Context::new(&c).unwrap();
        for seq in [100u16, 101, 99] {
            tx.protect_rtp(&mut rtp(seq, 7, b"a")).unwrap();
        }
        // The same numbers again (a sender starting over under its SSRC):
        // the same keystream; refused, as is one too old to tell.
        for seq in [100u16, 99, 30] {
            assert_eq!(
                tx.protect_rtp(&mut rtp(seq, 7, b"b")),
                Err(SrtpError::Reuse)
            );
        }
        // Late but never sent: its own keystream.
        tx.protect_rtp(&mut rtp(40, 7, b"late")).unwrap();
        // The last packet again, byte for byte (RFC 4733's resent end of
        // an event): the same ciphertext, so allowed; altered, refused.
        let end = rtp(103, 7, b"end of event");
        let (mut first, mut again) = (end.clone(), end.clone());
        tx.protect_rtp(&mut first).unwrap();
        tx.protect_rtp(&mut again).unwrap();
        assert_eq!(first, again);
        assert_eq!(
            tx.protect_rtp(&mut rtp(103, 7, b"not the end!")),
            Err(SrtpError::Reuse)
        );
        tx.protect_rtp(&mut rtp(102, 7, b"c")).unwrap();
        tx.protect_rtp(&mut rtp(100, 8, b"another SSRC")).unwrap();
    }

    #[test]
    fn a_key_is_used_for_fewer_packets_than_its_lifetime() {
        // RFC 4568 §6.1: SRTP and SRTCP packets each fewer than it.
        let c = Crypto {
            lifetime: Some(3),
            ..crypto(Suite::AesCm128HmacSha1_80, 1)
        };
        let unlimited = Crypto {
            lifetime: None,
            ..c.clone()
        };
        let (mut tx, mut rx) = (Context::new(&c).unwrap(), Context::new(&c).unwrap());
        let mut sender = Context::new(&unlimited).unwrap();
        for seq in 0..2 {
            tx.protect_rtp(&mut rtp(seq, 1, b"x")).unwrap();
        }
        assert_eq!(
            tx.protect_rtp(&mut rtp(2, 1, b"x")),
            Err(SrtpError::Expired)
        );
        let rr = [0x81, 201, 0, 1, 0, 0, 0, 1];
        for _ in 0..2 {
            tx.protect_rtcp(&mut rr.to_vec()).unwrap();
        }
        assert_eq!(tx.protect_rtcp(&mut rr.to_vec()), Err(SrtpError::Expired));
        // Receiving: a refused packet does not count.
        let mut sent: Vec<Vec<u8>> = (0..3)
            .map(|seq| {
                let mut p = rtp(seq, 1, b"x");
                sender.protect_rtp(&mut p).unwrap();
                p
            })
            .collect();
        let mut bad = sent[0].clone();
        bad[12] ^= 1;
        assert_eq!(rx.unprotect_rtp(&mut bad), Err(SrtpError::Auth));
        for p in &mut sent[..2] {
            rx.unprotect_rtp(p).unwrap();
        }
        assert_eq!(rx.unprotect_rtp(&mut sent[2]), Err(SrtpError::Expired));
        let mut report = rr.to_vec();
        sender.protect_rtcp(&mut report).unwrap();
        rx.unprotect_rtcp(&mut report).unwrap();
    }

    #[test]
    fn forged_ssrcs_do_not_push_out_the_real_one() {
        let c = crypto(Suite::AesCm128HmacSha1_80, 5);
        let (mut tx, mut rx) = (Context::new(&c).unwrap(), Context::new(&c).unwrap());
        let mut first = rtp(10, 7, b"real");
        tx.protect_rtp(&mut first).unwrap();
        let replayed = first.clone();
        rx.unprotect_rtp(&mut first).unwrap();
        // Packets of 100 other SSRCs under another key: all refused…
        let mut other = Context::new(&crypto(Suite::AesCm128HmacSha1_80, 6)).unwrap();
        for ssrc in 100..200 {
            let mut p = rtp(1, ssrc, b"forged");
            other.protect_rtp(&mut p).unwrap();
            assert_eq!(rx.unprotect_rtp(&mut p), Err(SrtpError::Auth));
        }
        // …and the real SSRC's replay window is still there.
        assert_eq!(
            rx.unprotect_rtp(&mut replayed.clone()),
            Err(SrtpError::Replay)
        );
    }

    #[test]
    fn the_replay_window_slides() {
        let mut r = Replay::default();
        for i in [100, 98, 101, 164] {
            r.check(i).unwrap();
            r.accept(i);
        }
        assert_eq!(r.check(98), Err(SrtpError::Replay), "more than 64 behind");
        assert_eq!(r.check(164), Err(SrtpError::Replay));
        assert!(r.check(120).is_ok());
        assert!(r.check(165).is_ok());
    }
}
