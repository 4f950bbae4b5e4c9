//! Who sent a console request: the client's address and whether it came
//! over https. The address is the TCP peer's, unless the peer is a trusted
//! proxy: then it is the hop that proxy put into `X-Forwarded-For`, the
//! nearest one not itself a trusted proxy (what a client writes into the
//! header before its proxy appends to it is never believed). Only a
//! trusted proxy's `X-Forwarded-Proto` says a request came over https.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::http::HeaderMap;

/// The request's client, as the console's handlers find it in the
/// request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub addr: IpAddr,
    /// Came over https, as a trusted proxy says.
    pub https: bool,
}

impl Client {
    /// The key a client's wrong tokens are counted under: its address, or
    /// for IPv6 its /64 (one host usually holds a whole /64).
    pub fn key(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        }
    }
}

/// The proxies whose forwarding headers the console believes.
#[derive(Debug, Clone, Default)]
pub struct Proxies {
    trusted: Vec<IpAddr>,
}

/// One address of `X-Forwarded-For`: `1.2.3.4`, `1.2.3.4:5`, `::1` or `[::1]:5`.
fn parse_hop(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    text.parse::<SocketAddr>()
        .ok()
        .map(|s| s.ip().to_canonical())
}

/// Every value of a header, split at commas, in order.
fn list<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect()
}

impl Proxies {
    pub fn new(trusted: Vec<IpAddr>) -> Self {
        Self {
            trusted: trusted.into_iter().map(|ip| ip.to_canonical()).collect(),
        }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.contains(&ip)
    }

    /// The client of a request from `peer` with these headers.
    pub fn client(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Client {
        let peer = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip().to_canonical());
        if !self.trusts(peer) {
            return Client {
                addr: peer,
                https: false,
            };
        }
        // From the nearest hop outwards, past our own proxies; a hop that is
        // not an address ends the walk (what lies beyond it is unknowable).
        let mut addr = peer;
        for hop in list(headers, "x-forwarded-for").into_iter().rev() {
            let Some(ip) = parse_hop(hop) else { break };
            addr = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        let https = list(headers, "x-forwarded-proto")
            .last()
            .is_some_and(|proto| proto.eq_ignore_ascii_case("https"));
        Client { addr, https }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().unwrap(), 40000))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarding_headers_count_only_from_a_trusted_proxy() {
        let none = Proxies::default();
        let spoofed = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ]);
        let c = none.client(peer("198.51.100.1"), &spoofed);
        assert_eq!(
            c,
            Client {
                addr: ip("198.51.100.1"),
                https: false
            }
        );

        let proxy = Proxies::new(vec![ip("10.0.0.1"), ip("10.0.0.2")]);
        let cases = [
            // The hop the proxy appended, not what the client wrote first.
            (
                vec![("x-forwarded-for", "1.1.1.1, 203.0.113.9")],
                "203.0.113.9",
            ),
            (
                vec![
                    ("x-forwarded-for", "1.1.1.1"),
                    ("x-forwarded-for", "203.0.113.9"),
                ],
                "203.0.113.9",
            ),
            // Past a chain of our own proxies.
            (
                vec![("x-forwarded-for", "203.0.113.9, 10.0.0.2")],
                "203.0.113.9",
            ),
            (
                vec![("x-forwarded-for", "[2001:db8::1]:443")],
                "2001:db8::1",
            ),
            (vec![("x-forwarded-for", "203.0.113.9:5000")], "203.0.113.9"),
            // Garbage nearest: the proxy itself is all that is known.
            (
                vec![("x-forwarded-for", "203.0.113.9, unknown")],
                "10.0.0.1",
            ),
            (vec![], "10.0.0.1"),
        ];
        for (pairs, want) in cases {
            let got = proxy.client(peer("10.0.0.1"), &headers(&pairs));
            assert_eq!(got.addr, ip(want), "{pairs:?}");
        }
        let https = |proto: &'static str| {
            proxy
                .client(peer("10.0.0.1"), &headers(&[("x-forwarded-proto", proto)]))
                .https
        };
        assert!(https("https") && https("HTTPS") && https("http, https"));
        assert!(!https("http") && !https("https, http"));
        assert!(!proxy.client(None, &spoofed).https, "no peer, no trust");
    }

    #[test]
    fn an_ipv6_client_counts_by_its_64() {
        let a = Client {
            addr: ip("2001:db8:1:2:aaaa::1"),
            https: false,
        };
        let b = Client {
            addr: ip("2001:db8:1:2:bbbb::9"),
            https: false,
        };
        assert_eq!(a.key(), b.key());
        let v4 = Client {
            addr: ip("203.0.113.9"),
            https: false,
        };
        assert_eq!(v4.key(), ip("203.0.113.9"));
        let mapped = Proxies::default().client(peer("::ffff:203.0.113.9"), &HeaderMap::new());
        assert_eq!(mapped.addr, ip("203.0.113.9"));
    }
}
