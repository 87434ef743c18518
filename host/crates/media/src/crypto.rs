//! SDES keys (RFC 4568): the `a=crypto` attribute of an SRTP offer or answer,
//! read and written, for a leg where the relay terminates SRTP.
//!
//! `a=crypto:<tag> <suite> inline:<base64 key||salt>[|<lifetime>][|<MKI>:<len>]`
//! — only the suites the relay can run are accepted; MKIs (one key per
//! stream here) and key lifetimes other than the default are refused rather
//! than half-honoured.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;

/// The crypto suites of RFC 4568 §6.2 (and RFC 7714 for GCM) the relay runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
    AeadAes128Gcm,
}

impl Suite {
    pub fn name(&self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            Suite::AeadAes128Gcm => "AEAD_AES_128_GCM",
        }
    }

    fn from_name(name: &str) -> Option<Suite> {
        [
            Suite::AesCm128HmacSha1_80,
            Suite::AesCm128HmacSha1_32,
            Suite::AeadAes128Gcm,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }

    /// Master key and salt lengths in bytes.
    pub fn key_salt_len(&self) -> (usize, usize) {
        match self {
            Suite::AeadAes128Gcm => (16, 12),
            _ => (16, 14),
        }
    }
}

/// One `a=crypto` line.
#[derive(Clone, PartialEq, Eq)]
pub struct Crypto {
    pub tag: u32,
    pub suite: Suite,
    pub key: Vec<u8>,
    pub salt: Vec<u8>,
    /// How many SRTP and SRTCP packets the key may protect (`|2^20`); None:
    /// the suite's own limit (RFC 3711 §9.2).
    pub lifetime: Option<u64>,
    /// The master key identifier each packet under this key carries
    /// (`|1:4`: value 1 in 4 bytes, big-endian), RFC 3711 §3.1.
    pub mki: Option<Vec<u8>>,
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of logs.
        f.debug_struct("Crypto")
            .field("tag", &self.tag)
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

/// Why an `a=crypto` value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("a=crypto is not \"tag suite inline:key\"")]
    Syntax,
    #[error("crypto suite {0} is not supported")]
    Suite(String),
    #[error("the key is not base64 of {0} bytes")]
    Key(usize),
    #[error("more than one key, or session parameters, are not supported")]
    Unsupported,
    #[error("the key lifetime or MKI \"{0}\" is not \"2^n\", a number, or \"value:length\" (1 to 128 bytes)")]
    Param(String),
}

/// The longest MKI (RFC 4568 §6.1: 1 to 128 bytes).
const MKI_MAX: usize = 128;

/// Digits only (`str::parse` would take a leading `+`).
fn digits<T: std::str::FromStr>(v: &str) -> Option<T> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// `2^n` or a decimal count of packets.
fn lifetime(v: &str) -> Option<u64> {
    match v.strip_prefix("2^") {
        Some(n) => digits::<u32>(n).filter(|n| *n < 64).map(|n| 1u64 << n),
        None => digits::<u64>(v),
    }
    .filter(|n| *n > 1)
}

/// `value:length`: the value big-endian in `length` bytes.
fn mki(v: &str) -> Option<Vec<u8>> {
    let (value, len) = v.split_once(':')?;
    let value: u128 = digits(value)?;
    let len: usize = digits(len).filter(|l| (1..=MKI_MAX).contains(l))?;
    let bytes = value.to_be_bytes();
    let used = bytes
        .iter()
        .position(|b| *b != 0)
        .map_or(0, |i| bytes.len() - i);
    if used > len {
        return None;
    }
    let mut out = vec![0u8; len];
    let n = len.min(bytes.len());
    out[len - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    Some(out)
}

impl Crypto {
    /// Reads the value of an `a=crypto` attribute (after `crypto:`).
    pub fn parse(value: &str) -> Result<Crypto, CryptoError> {
        let mut parts = value.split_whitespace();
        let tag = parts
            .next()
            .and_then(|t| t.parse::<u32>().ok())
            .filter(|t| *t < 1_000_000_000)
            .ok_or(CryptoError::Syntax)?;
        let suite_name = parts.next().ok_or(CryptoError::Syntax)?;
        let suite =
            Suite::from_name(suite_name).ok_or_else(|| CryptoError::Suite(suite_name.into()))?;
        let params = parts.next().ok_or(CryptoError::Syntax)?;
        // Session parameters after the key params (UNENCRYPTED_SRTP…) would
        // change what the relay must do: refused.
        if parts.next().is_some() {
            return Err(CryptoError::Unsupported);
        }
        let inline = params.strip_prefix("inline:").ok_or(CryptoError::Syntax)?;
        // Only one key: `;` would start a second key-param.
        if inline.contains(';') {
            return Err(CryptoError::Unsupported);
        }
        // key|lifetime|MKI, key|MKI or key|lifetime (an MKI has a colon).
        let mut fields = inline.split('|');
        let encoded = fields.next().ok_or(CryptoError::Syntax)?;
        let (mut life, mut id) = (None, None);
        for (i, extra) in fields.enumerate() {
            let bad = || CryptoError::Param(extra.chars().take(40).collect());
            if extra.contains(':') && id.is_none() {
                id = Some(mki(extra).ok_or_else(bad)?);
            } else if i == 0 && !extra.contains(':') {
                life = Some(lifetime(extra).ok_or_else(bad)?);
            } else {
                return Err(bad());
            }
        }
        let (key_len, salt_len) = suite.key_salt_len();
        let bytes = STANDARD
            .decode(encoded)
            .or_else(|_| STANDARD_NO_PAD.decode(encoded))
            .map_err(|_| CryptoError::Key(key_len + salt_len))?;
        if bytes.len() != key_len + salt_len {
            return Err(CryptoError::Key(key_len + salt_len));
        }
        Ok(Crypto {
            tag,
            suite,
            key: bytes[..key_len].to_vec(),
            salt: bytes[key_len..].to_vec(),
            lifetime: life,
            mki: id,
        })
    }

    /// A fresh key for `suite` from `random` (pass a CSPRNG's bytes).
    pub fn generate(tag: u32, suite: Suite, random: impl FnOnce(&mut [u8])) -> Crypto {
        let (key_len, salt_len) = suite.key_salt_len();
        let mut bytes = vec![0u8; key_len + salt_len];
        random(&mut bytes);
        Crypto {
            tag,
            suite,
            key: bytes[..key_len].to_vec(),
            salt: bytes[key_len..].to_vec(),
            lifetime: None,
            mki: None,
        }
    }

    /// The attribute value (after `crypto:`).
    pub fn to_value(&self) -> String {
        let mut bytes = self.key.clone();
        bytes.extend_from_slice(&self.salt);
        let mut v = format!(
            "{} {} inline:{}",
            self.tag,
            self.suite.name(),
            STANDARD.encode(bytes)
        );
        if let Some(n) = self.lifetime {
            if n.is_power_of_two() {
                v.push_str(&format!("|2^{}", n.trailing_zeros()));
            } else {
                v.push_str(&format!("|{n}"));
            }
        }
        if let Some(id) = &self.mki {
            // (Parsed from a u128: bytes before the last 16 are zeros.)
            let tail = &id[id.len().saturating_sub(16)..];
            let value = tail.iter().fold(0u128, |v, b| (v << 8) | u128::from(*b));
            v.push_str(&format!("|{value}:{}", id.len()));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rfc_4568_example_reads_and_writes_back() {
        // RFC 4568 §4's example key, without its lifetime and MKI first.
        let v = "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
        let c = Crypto::parse(v).unwrap();
        assert_eq!((c.tag, c.suite), (1, Suite::AesCm128HmacSha1_80));
        assert_eq!((c.key.len(), c.salt.len()), (16, 14));
        assert_eq!(&c.key[..4], b"YS__");
        assert_eq!(c.to_value(), v);
        assert!(!format!("{c:?}").contains("YS"), "no key in Debug");
        let c = Crypto::parse(&format!("{v}|2^31")).unwrap();
        assert_eq!((c.tag, c.lifetime, c.mki), (1, Some(1 << 31), None));
        // As the RFC has it: 2^20 packets, MKI 1 in 4 bytes.
        let full = format!("{v}|2^20|1:4");
        let c = Crypto::parse(&full).unwrap();
        assert_eq!(
            (c.lifetime, c.mki.clone()),
            (Some(1 << 20), Some(vec![0, 0, 0, 1]))
        );
        assert_eq!(c.to_value(), full);
        let c = Crypto::parse(&format!("{v}|1000|258:2")).unwrap();
        assert_eq!((c.lifetime, c.mki.clone()), (Some(1000), Some(vec![1, 2])));
        assert_eq!(c.to_value(), format!("{v}|1000|258:2"));
        let c = Crypto::parse(&format!("{v}|7:1")).unwrap();
        assert_eq!((c.lifetime, c.mki), (None, Some(vec![7])));
    }

    #[test]
    fn what_the_relay_cannot_honour_is_refused() {
        let key = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
        for (v, e) in [
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^20|1:4;inline:{key}|2^20|2:4"),
                CryptoError::Unsupported,
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^64"),
                CryptoError::Param("2^64".into()),
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|1"),
                CryptoError::Param("1".into()),
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^+5"),
                CryptoError::Param("2^+5".into()),
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|+1:4"),
                CryptoError::Param("+1:4".into()),
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|256:1"),
                CryptoError::Param("256:1".into()),
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|1:0"),
                CryptoError::Param("1:0".into()),
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|1:129"),
                CryptoError::Param("1:129".into()),
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|1:4|2^20"),
                CryptoError::Param("2^20".into()),
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^20|2^20"),
                CryptoError::Param("2^20".into()),
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key} UNENCRYPTED_SRTP"),
                CryptoError::Unsupported,
            ),
            (
                format!("1 F8_128_HMAC_SHA1_80 inline:{key}"),
                CryptoError::Suite("F8_128_HMAC_SHA1_80".into()),
            ),
            (
                "1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=".to_string(),
                CryptoError::Key(30),
            ),
            (
                "1 AES_CM_128_HMAC_SHA1_80 inline:!!!".to_string(),
                CryptoError::Key(30),
            ),
            (
                "x AES_CM_128_HMAC_SHA1_80 inline:a".to_string(),
                CryptoError::Syntax,
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 key:{key}"),
                CryptoError::Syntax,
            ),
            ("".to_string(), CryptoError::Syntax),
        ] {
            assert_eq!(Crypto::parse(&v), Err(e), "{v}");
        }
    }

    #[test]
    fn generated_keys_have_the_suites_lengths() {
        let c = Crypto::generate(2, Suite::AeadAes128Gcm, |b| b.fill(7));
        assert_eq!((c.key.len(), c.salt.len()), (16, 12));
        let back = Crypto::parse(&c.to_value()).unwrap();
        assert_eq!(back, c);
        let c = Crypto::generate(1, Suite::AesCm128HmacSha1_32, |b| {
            for (i, x) in b.iter_mut().enumerate() {
                *x = i as u8;
            }
        });
        assert_eq!(Crypto::parse(&c.to_value()).unwrap(), c);
    }
}
