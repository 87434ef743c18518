//! Small SIP helpers for plugins: URIs, E.164 numbers and address ranges.

use std::net::IpAddr;

/// The parts of a `sip:`/`sips:`/`tel:` URI a router looks at. Pieces are as
/// written (escaped), except [`Uri::user_unescaped`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    pub scheme: String,
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// `;name=value` parameters, names lower-cased.
    pub params: Vec<(String, Option<String>)>,
}

impl Uri {
    /// Parses `sip:user@host:port;params?headers` (and `sips:`, `tel:`).
    pub fn parse(s: &str) -> Option<Uri> {
        let (scheme, rest) = s.split_once(':')?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme == "tel" {
            let (number, params) = rest.split_once(';').unwrap_or((rest, ""));
            if number.is_empty() {
                return None;
            }
            return Some(Uri {
                scheme,
                user: Some(number.to_string()),
                host: String::new(),
                port: None,
                params: parse_params(params),
            });
        }
        if scheme != "sip" && scheme != "sips" {
            return None;
        }
        let rest = rest.split('?').next().unwrap_or(rest);
        let (user, hostpart) = match rest.rfind('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        let user = user.map(|u| u.split(':').next().unwrap_or(u).to_string());
        let (hostport, params) = hostpart.split_once(';').unwrap_or((hostpart, ""));
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p.parse().ok()?),
                None if after.is_empty() => None,
                None => return None,
            };
            (format!("[{h}]"), port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p.parse().ok()?)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() || host.contains([' ', '<', '>', '"']) {
            return None;
        }
        Some(Uri {
            scheme,
            user,
            host,
            port,
            params: parse_params(params),
        })
    }

    /// The user part with `%HH` escapes decoded.
    pub fn user_unescaped(&self) -> Option<String> {
        self.user.as_deref().map(unescape)
    }

    /// A parameter's value (`Some(None)` for a flag such as `lr`).
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }
}

fn parse_params(s: &str) -> Vec<(String, Option<String>)> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (n.to_ascii_lowercase(), Some(v.to_string())),
            None => (p.to_ascii_lowercase(), None),
        })
        .collect()
}

/// Decodes `%HH` escapes (invalid ones are kept as written).
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The unescaped user part of a URI (`sip:alice@h` → `alice`; `tel:+1415…` → the number).
pub fn user_of(uri: &str) -> Option<String> {
    Uri::parse(uri)?.user_unescaped()
}

/// The URI inside a From/To/Contact value (`"A" <sip:a@h>;tag=1` → `sip:a@h`).
pub fn name_addr_uri(value: &str) -> String {
    let v = value.trim();
    // A quoted display name may hold '<'.
    let skip = if let Some(rest) = v.strip_prefix('"') {
        let mut escaped = false;
        let mut end = v.len();
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = i + 2;
                    break;
                }
                _ => {}
            }
        }
        end
    } else {
        0
    };
    let v = &v[skip.min(v.len())..];
    if let Some(start) = v.find('<') {
        if let Some(len) = v[start + 1..].find('>') {
            return v[start + 1..start + 1 + len].to_string();
        }
    }
    v.split(';').next().unwrap_or(v).trim().to_string()
}

/// E.164 numbers.
pub mod e164 {
    /// True for `+` followed by 8 to 15 digits, the first not 0.
    pub fn is_valid(s: &str) -> bool {
        let Some(d) = s.strip_prefix('+') else {
            return false;
        };
        (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
    }

    /// Normalises a dialled number to E.164: drops visual separators
    /// (space, `-`, `.`, `(`, `)`), turns an international `00` or `011` prefix
    /// into `+`, and gives a national number `default_country` (for example
    /// `"1"`): `(415) 555-0100` → `+14155550100`. `None` when the result is not
    /// a valid E.164 number or the input has other characters (`*`, `#`, letters).
    pub fn normalize(number: &str, default_country: &str) -> Option<String> {
        let number = number.split(';').next().unwrap_or(number);
        let mut digits = String::with_capacity(number.len() + 4);
        let mut plus = false;
        for (i, c) in number.chars().enumerate() {
            match c {
                '+' if i == 0 => plus = true,
                '0'..='9' => digits.push(c),
                ' ' | '-' | '.' | '(' | ')' => {}
                _ => return None,
            }
        }
        let e164 = if plus {
            format!("+{digits}")
        } else if let Some(rest) = digits.strip_prefix("011") {
            format!("+{rest}")
        } else if let Some(rest) = digits.strip_prefix("00") {
            format!("+{rest}")
        } else if default_country == "1" && digits.len() == 11 && digits.starts_with('1') {
            format!("+{digits}")
        } else if let Some(rest) = digits.strip_prefix('0').filter(|_| default_country != "1") {
            format!("+{default_country}{rest}")
        } else {
            format!("+{default_country}{digits}")
        };
        is_valid(&e164).then_some(e164)
    }
}

/// An address range such as `54.172.60.0/30` or `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/LEN` (a bare address is a /32 or /128).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, len) = s.split_once('/').unwrap_or((s, ""));
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address range (ADDR/LEN)"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = if len.is_empty() {
            max
        } else {
            len.trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0–{max}"))?
        };
        Ok(Cidr { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let u = Uri::parse("sip:%2B1415@[2001:db8::1]:5080;transport=tcp;lr?X=1").unwrap();
        assert_eq!(u.user.as_deref(), Some("%2B1415"));
        assert_eq!(u.user_unescaped().as_deref(), Some("+1415"));
        assert_eq!(u.host, "[2001:db8::1]");
        assert_eq!(u.port, Some(5080));
        assert_eq!(u.param("transport"), Some(Some("tcp")));
        assert_eq!(u.param("lr"), Some(None));
        assert_eq!(
            user_of("tel:+14155550100;phone-context=x").as_deref(),
            Some("+14155550100")
        );
        assert_eq!(user_of("sip:example.com"), None);
        assert!(Uri::parse("http://x").is_none());
        assert!(Uri::parse("sip:a@h:notaport").is_none());
        assert_eq!(name_addr_uri("\"A\" <sip:a@h>;tag=1"), "sip:a@h");
        assert_eq!(name_addr_uri("sip:a@h;tag=1"), "sip:a@h");
        assert_eq!(unescape("a%20b%zz%4"), "a b%zz%4");
    }

    #[test]
    fn e164_numbers() {
        use e164::*;
        assert_eq!(
            normalize("(415) 555-0100", "1").as_deref(),
            Some("+14155550100")
        );
        assert_eq!(
            normalize("14155550100", "1").as_deref(),
            Some("+14155550100")
        );
        assert_eq!(
            normalize("+44 20 7946 0958", "1").as_deref(),
            Some("+442079460958")
        );
        assert_eq!(
            normalize("011442079460958", "1").as_deref(),
            Some("+442079460958")
        );
        assert_eq!(
            normalize("020 7946 0958", "44").as_deref(),
            Some("+442079460958")
        );
        assert_eq!(normalize("*69", "1"), None);
        assert_eq!(normalize("+1234", "1"), None);
        assert!(is_valid("+14155550100"));
        assert!(!is_valid("14155550100"));
        assert!(!is_valid("+0123456789"));
    }

    #[test]
    fn ranges() {
        let c = Cidr::parse("54.172.60.0/30").unwrap();
        assert!(c.contains("54.172.60.3".parse().unwrap()));
        assert!(!c.contains("54.172.60.4".parse().unwrap()));
        assert!(c.contains("::ffff:54.172.60.1".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }
}
