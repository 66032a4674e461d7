//! Client addresses: CIDR blocks, the trusted-proxy rule that decides which hop of
//! `X-Forwarded-For` is the client, and prefix masks for keying by network.
//!
//! A peer that is not in `[server] trusted-proxies` is the client, whatever its headers say.
//! A trusted peer's `X-Forwarded-For` is read from the right: trusted hops are skipped and the
//! first untrusted one is the client (a client cannot forge a hop to the right of its own).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use http::HeaderMap;
#[cfg(test)]
use http::HeaderValue;

/// An address block, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, unmap(ip)) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(unmap(ip), self.prefix) == self.addr
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an address or CIDR block"))?;
        let addr = unmap(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?,
        };
        if mask(addr, prefix) != addr {
            return Err(format!(
                "`{s}` has bits set past its prefix: write `{}/{prefix}`",
                mask(addr, prefix)
            ));
        }
        Ok(Cidr { addr, prefix })
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket reports) as IPv4.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The first `prefix` bits of `ip`, the rest zero.
pub fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix.min(128)))
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// Whether `ip` is one of the trusted proxies.
pub fn trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|c| c.contains(ip))
}

/// The client's address: the peer, unless the peer is a trusted proxy, in which case the
/// rightmost untrusted hop of `X-Forwarded-For` (or the leftmost hop if all are trusted).
/// A malformed hop ends the walk: what is left of it cannot be believed.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, proxies: &[Cidr]) -> IpAddr {
    let peer = unmap(peer);
    if proxies.is_empty() || !trusted(proxies, peer) {
        return peer;
    }
    let mut client = peer;
    // Every `X-Forwarded-For` line, last first (a proxy may add its own line); a line that is
    // not text is a malformed hop like any other.
    for line in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(line) = line.to_str() else {
            return client;
        };
        for hop in line.rsplit(',') {
            let Some(ip) = parse_hop(hop.trim()) else {
                return client;
            };
            client = ip;
            if !trusted(proxies, ip) {
                return ip;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` hop: an address, optionally `[v6]` or with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(unmap(ip));
    }
    if let Ok(sa) = hop.parse::<std::net::SocketAddr>() {
        return Some(unmap(sa.ip()));
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse().ok())
        .map(unmap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_parse_and_contain() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("::1")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")));
        assert!("10.0.0.1/8".parse::<Cidr>().is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
        assert_eq!(mask(ip("2001:db8:1:2:3:4:5:6"), 64), ip("2001:db8:1:2::"));
        assert_eq!(mask(ip("1.2.3.4"), 24), ip("1.2.3.0"));
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop() {
        let proxies: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 1.2.3.4, 10.0.0.7".parse().unwrap(),
        );
        // An untrusted peer's header is ignored.
        assert_eq!(client_addr(ip("5.5.5.5"), &h, &proxies), ip("5.5.5.5"));
        // A trusted peer: skip trusted hops from the right; the spoofed left part is not read.
        assert_eq!(client_addr(ip("10.0.0.1"), &h, &proxies), ip("1.2.3.4"));
        h.insert("x-forwarded-for", "garbage, 10.0.0.9".parse().unwrap());
        assert_eq!(client_addr(ip("10.0.0.1"), &h, &proxies), ip("10.0.0.9"));
        assert_eq!(
            client_addr(ip("10.0.0.1"), &HeaderMap::new(), &proxies),
            ip("10.0.0.1")
        );
        assert_eq!(client_addr(ip("10.0.0.1"), &h, &[]), ip("10.0.0.1"));
        // Several lines are one list, the last line's hops nearest.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.append("x-forwarded-for", "1.2.3.4, 10.0.0.8".parse().unwrap());
        assert_eq!(client_addr(ip("10.0.0.1"), &h, &proxies), ip("1.2.3.4"));
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "7.7.7.7".parse().unwrap());
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"6.6.6.6\xff").unwrap(),
        );
        assert_eq!(client_addr(ip("10.0.0.1"), &h, &proxies), ip("10.0.0.1"));
    }
}
