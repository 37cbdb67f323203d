//! Where a request comes from: the client's address, which is the peer of
//! the connection unless that peer is a proxy this deployment trusts
//! (`HEARTY_TRUSTED_PROXIES`), whose `X-Forwarded-For` then names it;
//! and how many connections one address may hold.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

/// The trusted proxies: addresses and CIDR blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proxies(Vec<(IpAddr, u8)>);

impl FromStr for Proxies {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut blocks = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (addr, bits) = match item.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (item, None),
            };
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("`{item}` is not an address or CIDR block"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(b) => b
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("`{item}` has a bad prefix length"))?,
            };
            blocks.push((addr, bits));
        }
        Ok(Proxies(blocks))
    }
}

impl Proxies {
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|(block, bits)| within(ip, *block, *bits))
    }

    /// The client of a request from `peer` with this `X-Forwarded-For`: the
    /// last address of the chain not itself a trusted proxy.
    pub fn client(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let chain = forwarded_for.unwrap_or("");
        chain
            .rsplit(',')
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .find(|a| !self.trusts(*a))
            .unwrap_or(peer)
    }
}

/// What counts as one client address: an IPv4 address, or an IPv6 /64 (one
/// subscriber's network: any host of it is the same client, or one machine
/// would be millions). An IPv4 address written as IPv6 is the IPv4 address.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
    }
}

/// Caps the open connections: in all, and per client address (a trusted
/// proxy carries many clients and counts only towards the total). A
/// connection over a cap is shut at once, before it costs a request.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Mutex<Counts>>,
    max_total: usize,
    max_per_address: usize,
    proxies: Proxies,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// One admitted connection: released when the server drops the
/// connection's data.
struct Admitted {
    counts: Arc<Mutex<Counts>>,
    address: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(a) = self.address
            && let Some(n) = c.per_address.get_mut(&a)
        {
            *n -= 1;
            if *n == 0 {
                c.per_address.remove(&a);
            }
        }
    }
}

impl Connections {
    pub fn new(max_total: usize, max_per_address: usize, proxies: Proxies) -> Self {
        Connections {
            inner: Arc::default(),
            max_total,
            max_per_address,
            proxies,
        }
    }

    /// Counts a connection from `peer`, or refuses it (`None`) when a cap
    /// is reached.
    fn admit_peer(&self, peer: IpAddr) -> Option<Admitted> {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if c.total >= self.max_total {
            return None;
        }
        let address = (!self.proxies.trusts(peer)).then_some(client_key(peer));
        if let Some(a) = address {
            let n = c.per_address.entry(a).or_insert(0);
            if *n >= self.max_per_address {
                return None;
            }
            *n += 1;
        }
        c.total += 1;
        Some(Admitted {
            counts: self.inner.clone(),
            address,
        })
    }

    /// The server's connection hook: admits the connection (its count
    /// lives in the connection's data) or shuts it.
    pub fn admit(&self, io: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
        let Some(stream) = io.downcast_ref::<actix_web::rt::net::TcpStream>() else {
            return;
        };
        let Ok(peer) = stream.peer_addr() else {
            return;
        };
        match self.admit_peer(peer.ip()) {
            Some(admitted) => {
                data.insert(admitted);
            }
            None => {
                crate::metrics::inc(&crate::metrics::METRICS.http_connections_refused_total);
                tracing::debug!(peer = %peer.ip(), "connection over its cap: shut");
                let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

fn within(ip: IpAddr, block: IpAddr, bits: u8) -> bool {
    let bits = u32::from(bits);
    match (ip, block) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_network_is_one_client() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            client_key(ip("2001:db8:1:2::5")),
            client_key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::5")),
            client_key(ip("2001:db8:1:3::5"))
        );
        assert_eq!(client_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(client_key(ip("10.1.2.3")), ip("10.1.2.3"));
        // The flood of one /64 meets one cap.
        let c = Connections::new(100, 2, Proxies::default());
        let _a = c.admit_peer(ip("2001:db8::1")).expect("first");
        let _b = c.admit_peer(ip("2001:db8::2")).expect("second");
        assert!(c.admit_peer(ip("2001:db8::3")).is_none());
    }

    #[test]
    fn proxies_append_lines_of_their_own() {
        // Two `X-Forwarded-For` lines joined: the client's own (a lie) and
        // the trusted proxy's; the proxy's line names the client.
        let p: Proxies = "127.0.0.2".parse().expect("valid");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            p.client(ip("127.0.0.2"), Some("203.0.113.7,198.51.100.9")),
            ip("198.51.100.9")
        );
    }

    #[test]
    fn connections_are_capped_per_address_and_in_all() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let c = Connections::new(3, 2, "10.0.0.1".parse().expect("proxies"));
        let a1 = c.admit_peer(ip("1.1.1.1")).expect("first");
        let _a2 = c.admit_peer(ip("1.1.1.1")).expect("second");
        assert!(c.admit_peer(ip("1.1.1.1")).is_none(), "per address");
        drop(a1);
        let _a3 = c.admit_peer(ip("1.1.1.1")).expect("released");
        // A trusted proxy counts only towards the total.
        let _p = c.admit_peer(ip("10.0.0.1")).expect("proxy");
        assert!(c.admit_peer(ip("2.2.2.2")).is_none(), "in all");
    }

    #[test]
    fn clients_behind_trusted_proxies() {
        let p: Proxies = "10.0.0.0/8, 192.168.1.1".parse().expect("valid");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(p.trusts(ip("10.1.2.3")) && p.trusts(ip("192.168.1.1")));
        assert!(!p.trusts(ip("192.168.1.2")));
        // A peer that is no proxy is the client, whatever it claims.
        assert_eq!(p.client(ip("1.2.3.4"), Some("5.6.7.8")), ip("1.2.3.4"));
        // Behind the proxies: the last untrusted hop.
        assert_eq!(
            p.client(ip("10.0.0.1"), Some("9.9.9.9, 5.6.7.8, 10.2.2.2")),
            ip("5.6.7.8")
        );
        assert_eq!(p.client(ip("10.0.0.1"), None), ip("10.0.0.1"));
        assert!("10.0.0.0/40".parse::<Proxies>().is_err());
        assert!("nope".parse::<Proxies>().is_err());
        assert_eq!("".parse::<Proxies>(), Ok(Proxies::default()));
    }
}
