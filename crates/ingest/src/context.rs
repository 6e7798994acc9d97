//! What the request says about its client: the address and the user agent.
//!
//! The address is the connection's peer, unless the peer is a trusted proxy
//! (`ingest.trusted_proxies`): then ingest reads the chain of addresses the proxies appended —
//! `Forwarded: for=…` (RFC 7239) when present, else `X-Forwarded-For` — from the right, and the
//! client is the first address that is not itself a trusted proxy (or the left-most one when
//! all are). Anything left of that is what the client claimed and is never believed. A hop
//! that is not an address (`unknown`, an obfuscated name, garbage) ends the walk at the
//! trusted hop that reported it. With `ingest.anonymize_ip` the host part is zeroed
//! (IPv4 to /24, IPv6 to /48) before anything is stored.
//!
//! The user agent is the `User-Agent` header (invalid UTF-8 replaced), cut at
//! [`MAX_USER_AGENT`] bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use axum::http::HeaderMap;
use axum::http::header::USER_AGENT;
use ess_core::config::{IngestConfig, parse_cidr};

/// Longest user agent stored, in bytes.
pub const MAX_USER_AGENT: usize = 512;

/// The client of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// The client's address as text; empty when unknown.
    pub ip: String,
    /// The `User-Agent` header; empty when absent.
    pub user_agent: String,
}

/// The rule for finding the client's address.
#[derive(Debug, Clone, Default)]
pub struct ClientAddress {
    trusted: Vec<(IpAddr, u8)>,
    anonymize: bool,
}

impl ClientAddress {
    /// From `ingest.trusted_proxies` and `ingest.anonymize_ip` (validated when the config was
    /// loaded; an entry that does not parse is skipped).
    pub fn new(config: &IngestConfig) -> Self {
        Self {
            trusted: config
                .trusted_proxies
                .iter()
                .filter_map(|p| parse_cidr(p))
                .collect(),
            anonymize: config.anonymize_ip,
        }
    }

    /// The request's client context, from the peer address (`None` when unknown) and headers.
    pub fn context(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> RequestContext {
        let ip = self
            .client_ip(peer, headers)
            .map(|ip| self.store_form(ip).to_string())
            .unwrap_or_default();
        let user_agent = headers
            .get(USER_AGENT)
            .map(|v| {
                let text = String::from_utf8_lossy(v.as_bytes());
                let mut end = text.len().min(MAX_USER_AGENT);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text[..end].to_owned()
            })
            .unwrap_or_default();
        RequestContext { ip, user_agent }
    }

    /// The client's address under the trusted-proxy rule.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let mut client = canonical(peer?);
        if !self.is_trusted(client) {
            return Some(client);
        }
        let chain = forwarded_chain(headers);
        for hop in chain.iter().rev() {
            let Some(hop) = hop else {
                // Not an address: the trusted hop that reported it is all we know.
                break;
            };
            client = canonical(*hop);
            if !self.is_trusted(client) {
                break;
            }
        }
        Some(client)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted
            .iter()
            .any(|&(net, prefix)| in_block(ip, net, prefix))
    }

    /// `ip` as stored: with `ingest.anonymize_ip`, its host part zeroed.
    pub fn store_form(&self, ip: IpAddr) -> IpAddr {
        if !self.anonymize {
            return ip;
        }
        match ip {
            IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) & !0xff)),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 80) - 1))),
        }
    }
}

/// An IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`, how dual-stack sockets show IPv4
/// peers) as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_block(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, canonical(net)) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// The forwarded addresses, left (client side) to right (nearest proxy); `None` for a hop
/// that is not an address. `Forwarded` wins over `X-Forwarded-For` when both are present.
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<&str> = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.trim().split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                    .and_then(|(_, v)| parse_node(v.trim().trim_matches('"')))
            })
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|hop| parse_node(hop.trim()))
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:5678`, `[2001:db8::1]`, `[2001:db8::1]:443` or `2001:db8::1`.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    let (host, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(trusted: &[&str], anonymize: bool) -> ClientAddress {
        let config = IngestConfig {
            trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
            anonymize_ip: anonymize,
            ..IngestConfig::default()
        };
        ClientAddress::new(&config)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                *k,
                axum::http::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let r = rule(&["10.0.0.0/8"], false);
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(r.client_ip(ip("198.51.100.1"), &h), ip("198.51.100.1"));
        let none = rule(&[], false);
        assert_eq!(none.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn a_trusted_proxy_s_header_names_the_client() {
        let r = rule(&["10.0.0.0/8", "::1"], false);
        // The client claims 1.1.1.1; the edge proxy 10.1.1.1 saw 203.0.113.9.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.1.1.1")]);
        assert_eq!(r.client_ip(ip("10.0.0.2"), &h), ip("203.0.113.9"));
        assert_eq!(r.client_ip(ip("::1"), &h), ip("203.0.113.9"));
        assert_eq!(
            r.client_ip(ip("::ffff:10.0.0.2"), &h),
            ip("203.0.113.9"),
            "IPv4-mapped peers are IPv4"
        );
        let all_trusted = headers(&[("x-forwarded-for", "10.9.9.9")]);
        assert_eq!(r.client_ip(ip("10.0.0.2"), &all_trusted), ip("10.9.9.9"));
        let garbage = headers(&[("x-forwarded-for", "203.0.113.9, nonsense")]);
        assert_eq!(r.client_ip(ip("10.0.0.2"), &garbage), ip("10.0.0.2"));
    }

    #[test]
    fn forwarded_wins_and_is_parsed_with_ports_and_brackets() {
        let r = rule(&["10.0.0.0/8"], false);
        let h = headers(&[
            (
                "forwarded",
                r#"for=192.0.2.60;proto=http, For="[2001:db8:cafe::17]:4711""#,
            ),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(r.client_ip(ip("10.0.0.2"), &h), ip("2001:db8:cafe::17"));
        let port = headers(&[("x-forwarded-for", "192.0.2.60:5555")]);
        assert_eq!(r.client_ip(ip("10.0.0.2"), &port), ip("192.0.2.60"));
    }

    #[test]
    fn anonymised_addresses_lose_their_host_part() {
        let r = rule(&[], true);
        let ctx = r.context(ip("203.0.113.9"), &HeaderMap::new());
        assert_eq!(ctx.ip, "203.0.113.0");
        let ctx = r.context(ip("2001:db8:cafe:1:2:3:4:5"), &HeaderMap::new());
        assert_eq!(ctx.ip, "2001:db8:cafe::");
    }

    #[test]
    fn user_agent_is_kept_and_capped() {
        let r = rule(&[], false);
        let ua = "é".repeat(400);
        let ctx = r.context(None, &headers(&[("user-agent", &ua)]));
        assert_eq!(ctx.ip, "");
        assert!(ctx.user_agent.len() <= MAX_USER_AGENT && ctx.user_agent.starts_with("éé"));
    }
}
