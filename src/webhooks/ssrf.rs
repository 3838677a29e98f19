//! The SSRF guard: a webhook URL's host is resolved here, every address is checked against the
//! ranges a receiver may never be in (loopback, private, link-local and cloud metadata, CGNAT,
//! ULA, multicast, reserved, and IPv4 hidden in IPv6 forms) unless the operator's `allow_cidrs`
//! allow it, and the connection is made to the checked address only (pinned), so a DNS answer
//! that changes between the check and the connect cannot redirect it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// An address range, `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let ip = s.parse::<IpAddr>().ok()?;
                (ip, if ip.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { net: ip, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let (bytes, bits) = (usize::from(prefix / 8), prefix % 8);
    if a[..bytes] != b[..bytes] {
        return false;
    }
    bits == 0 || (a[bytes] ^ b[bytes]) >> (8 - bits) == 0
}

/// Why an address may not receive webhooks, or `None` when it may (a public unicast address).
pub fn refused_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [127, ..] => "loopback",
        [0, ..] => "unspecified",
        [10, ..] | [192, 168, ..] => "private",
        [172, b, ..] if (16..32).contains(&b) => "private",
        [169, 254, 169, 254] => "cloud metadata",
        [169, 254, ..] => "link-local",
        [100, b, ..] if (64..128).contains(&b) => "shared address space (CGNAT)",
        [192, 0, 0, _] | [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "reserved",
        [198, b, ..] if b == 18 || b == 19 => "benchmarking",
        [a, ..] if a >= 224 => "multicast or reserved",
        _ => return None,
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = embedded_v4(ip) {
        return refused_v4(v4);
    }
    let s = ip.segments();
    Some(match s {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() => "unspecified",
        [a, ..] if a & 0xffc0 == 0xfe80 => "link-local",
        [a, ..] if a & 0xfe00 == 0xfc00 => "unique local (ULA)",
        [a, ..] if a & 0xff00 == 0xff00 => "multicast",
        [0x2001, 0xdb8, ..] => "reserved",
        _ => return None,
    })
}

/// The IPv4 address inside an IPv4-mapped, IPv4-compatible, NAT64 or 6to4 IPv6 address, which
/// reach that IPv4 host.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match s {
        [0, 0, 0, 0, 0, 0xffff, ..] => Some(tail),
        [0, 0, 0, 0, 0, 0, a, _] if a != 0 => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => Some(tail),
        [0x2002, ..] => Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        _ => None,
    }
}

/// The operator's exceptions.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    pub allow: Vec<Cidr>,
}

/// Why a URL was refused; the text names the host and the range, never a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl Guard {
    /// Whether `ip` may receive webhooks: outside every refused range, or inside `allow`.
    pub fn check(&self, ip: IpAddr) -> Result<(), &'static str> {
        if self.allow.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        refused_range(ip).map_or(Ok(()), Err)
    }

    /// Resolves `host` and answers the address to connect to: the first one the guard accepts.
    /// Every answer refused → `Refused`. Resolution uses the system resolver on a blocking thread.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, Refused> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| Refused(format!("cannot resolve {host}: {e}")))?
                .collect(),
        };
        let mut why = "no address";
        for a in &addrs {
            match self.check(a.ip()) {
                Ok(()) => return Ok(*a),
                Err(w) => why = w,
            }
        }
        Err(Refused(format!(
            "{host} resolves to a refused address ({why}); an operator may allow it with \
             [webhooks] allow_cidrs"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_ranges_table() {
        let refused = [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
        ];
        for a in refused {
            let ip: IpAddr = a.parse().unwrap();
            assert!(refused_range(ip).is_some(), "{a} must be refused");
        }
        for a in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "1.1.1.1",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(refused_range(ip), None, "{a} must be allowed");
        }
    }

    #[test]
    fn allow_cidrs_make_exceptions() {
        let g = Guard {
            allow: vec![
                Cidr::parse("127.0.0.1/32").unwrap(),
                Cidr::parse("fd00::/8").unwrap(),
            ],
        };
        assert!(g.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(g.check("127.0.0.2".parse().unwrap()).is_err());
        assert!(g.check("fd12::1".parse().unwrap()).is_ok());
        assert!(g.check("169.254.169.254".parse().unwrap()).is_err());
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
        assert_eq!(Cidr::parse("nope"), None);
        assert!(
            Cidr::parse("10.0.0.0/8")
                .unwrap()
                .contains("10.255.0.1".parse().unwrap())
        );
        assert!(
            !Cidr::parse("10.0.0.0/9")
                .unwrap()
                .contains("10.128.0.1".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn names_are_resolved_before_the_check() {
        let g = Guard::default();
        let e = g
            .resolve("localhost", 80)
            .await
            .expect_err("localhost is loopback");
        assert!(e.0.contains("loopback"), "{}", e.0);
        assert!(g.resolve("[::1]", 80).await.is_err());
        let g = Guard {
            allow: vec![
                Cidr::parse("127.0.0.0/8").unwrap(),
                Cidr::parse("::1").unwrap(),
            ],
        };
        assert!(g.resolve("localhost", 80).await.is_ok());
    }
}
