//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer sends
//! before anything else on a connection it forwards, naming the client it came from.
//! Sans-IO: [`parse`] takes the bytes received so far and says whether a header is
//! complete, how long it is, and what it says. The listener reads it (see
//! [`ProxyProtocol`](crate::ProxyProtocol)) only from the load balancers it trusts.
//!
//! ```text
//!  v1: "PROXY TCP4 192.0.2.1 198.51.100.25 50123 25\r\n"     (text, at most 107 bytes)
//!  v2: \r\n\r\n\0\r\nQUIT\n, ver|cmd, family|proto, length, addresses, TLVs (binary)
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes a version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, CRLF included (the specification's limit).
pub const V1_MAX_LEN: usize = 107;
/// The longest version 2 header we take, TLVs included: the addresses need at most
/// 232 bytes; what a load balancer adds (TLS details, a unique id) fits easily.
pub const V2_MAX_LEN: usize = 4096;

/// What a complete header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxiedAddresses {
    /// The connection came from `source` (the client) to `destination` (the address
    /// the client connected to, on the load balancer).
    Proxied {
        /// The client.
        source: SocketAddr,
        /// Where it connected.
        destination: SocketAddr,
    },
    /// The load balancer speaks for itself (v2 `LOCAL`, a health check), or the
    /// addresses are of a kind we do not take (v1 `UNKNOWN`, v2 `AF_UNSPEC`, `AF_UNIX`,
    /// datagrams): the connection's own addresses stand.
    Local,
}

/// The result of [`parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A complete header of `len` bytes (what follows is the client's).
    Complete {
        /// Its length.
        len: usize,
        /// What it says.
        addresses: ProxiedAddresses,
    },
}

/// Why a header is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The bytes start neither with `PROXY ` nor with the version 2 signature.
    #[error("not a PROXY protocol header")]
    Signature,
    /// A version 1 line longer than 107 bytes, or a version 2 header longer than
    /// [`V2_MAX_LEN`].
    #[error("PROXY protocol header too long")]
    TooLong,
    /// A header that breaks the rules.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

/// Parses a PROXY protocol header (version 1 or 2) at the start of `input`.
///
/// ```
/// use smtp_server::proxy::{parse, Parsed, ProxiedAddresses};
/// let input = b"PROXY TCP4 192.0.2.1 198.51.100.25 50123 25\r\nEHLO";
/// let Ok(Parsed::Complete { len, addresses }) = parse(input) else { panic!() };
/// assert_eq!(&input[len..], b"EHLO");
/// assert_eq!(addresses, ProxiedAddresses::Proxied {
///     source: "192.0.2.1:50123".parse().unwrap(),
///     destination: "198.51.100.25:25".parse().unwrap(),
/// });
/// assert_eq!(parse(b"PROXY TCP4 192.0"), Ok(Parsed::Incomplete));
/// assert!(parse(b"EHLO client.test\r\n").is_err());
/// ```
pub fn parse(input: &[u8]) -> Result<Parsed, ProxyError> {
    let v1 = b"PROXY ";
    if input.starts_with(v1) {
        return parse_v1(input);
    }
    if input.starts_with(&V2_SIGNATURE) {
        return parse_v2(input);
    }
    let n = input.len();
    if (n < v1.len() && v1.starts_with(input)) || (n < 12 && V2_SIGNATURE.starts_with(input)) {
        return Ok(Parsed::Incomplete);
    }
    Err(ProxyError::Signature)
}

fn parse_v1(input: &[u8]) -> Result<Parsed, ProxyError> {
    let window = &input[..input.len().min(V1_MAX_LEN)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if input.len() >= V1_MAX_LEN {
            Err(ProxyError::TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = window[..lf]
        .strip_suffix(b"\r")
        .ok_or(ProxyError::Malformed("line not ended by CRLF"))?;
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::Malformed("not ASCII"))?;
    let mut fields = line.split(' ');
    fields.next(); // "PROXY"
    let family = fields.next().unwrap_or("");
    let complete = |addresses| {
        Ok(Parsed::Complete {
            len: lf + 1,
            addresses,
        })
    };
    if family == "UNKNOWN" {
        // Whatever follows is to be ignored (the specification's words).
        return complete(ProxiedAddresses::Local);
    }
    let parts: Vec<&str> = fields.collect();
    let [src, dst, sport, dport] = parts[..] else {
        return Err(ProxyError::Malformed(
            "expected four fields after the family",
        ));
    };
    let (source, destination) = match family {
        "TCP4" => (IpAddr::V4(ipv4(src)?), IpAddr::V4(ipv4(dst)?)),
        "TCP6" => (IpAddr::V6(ipv6(src)?), IpAddr::V6(ipv6(dst)?)),
        _ => {
            return Err(ProxyError::Malformed(
                "unknown family (TCP4, TCP6, UNKNOWN)",
            ));
        }
    };
    complete(ProxiedAddresses::Proxied {
        source: SocketAddr::new(source, port(sport)?),
        destination: SocketAddr::new(destination, port(dport)?),
    })
}

fn ipv4(s: &str) -> Result<Ipv4Addr, ProxyError> {
    s.parse()
        .map_err(|_| ProxyError::Malformed("bad IPv4 address"))
}

fn ipv6(s: &str) -> Result<Ipv6Addr, ProxyError> {
    s.parse()
        .map_err(|_| ProxyError::Malformed("bad IPv6 address"))
}

/// A port: decimal digits, no sign, no leading zero.
fn port(s: &str) -> Result<u16, ProxyError> {
    let bad = ProxyError::Malformed("bad port");
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return Err(bad);
    }
    s.parse().map_err(|_| bad)
}

fn parse_v2(input: &[u8]) -> Result<Parsed, ProxyError> {
    let Some(fixed) = input.get(..16) else {
        return Ok(Parsed::Incomplete);
    };
    let (version, command) = (fixed[12] >> 4, fixed[12] & 0x0f);
    if version != 2 {
        return Err(ProxyError::Malformed(
            "version 2 signature, another version",
        ));
    }
    let (family, transport) = (fixed[13] >> 4, fixed[13] & 0x0f);
    let len = 16 + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > V2_MAX_LEN {
        return Err(ProxyError::TooLong);
    }
    let Some(header) = input.get(..len) else {
        return Ok(Parsed::Incomplete);
    };
    let body = &header[16..];
    let complete = |addresses| Ok(Parsed::Complete { len, addresses });
    match command {
        0x0 => return complete(ProxiedAddresses::Local),
        0x1 => {}
        _ => return Err(ProxyError::Malformed("unknown command (LOCAL, PROXY)")),
    }
    let need = match family {
        0x1 => 12,
        0x2 => 36,
        0x3 => 216,
        0x0 => 0,
        _ => return Err(ProxyError::Malformed("unknown address family")),
    };
    if body.len() < need {
        return Err(ProxyError::Malformed("addresses longer than the header"));
    }
    if transport > 2 {
        return Err(ProxyError::Malformed("unknown transport protocol"));
    }
    // Only TCP over IPv4 or IPv6 names a client we can use; the rest (and the TLVs
    // after the addresses) is skipped.
    if transport != 1 {
        return complete(ProxiedAddresses::Local);
    }
    let port_at = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
    let addresses = match family {
        0x1 => {
            let ip = |i: usize| IpAddr::from([body[i], body[i + 1], body[i + 2], body[i + 3]]);
            ProxiedAddresses::Proxied {
                source: SocketAddr::new(ip(0), port_at(8)),
                destination: SocketAddr::new(ip(4), port_at(10)),
            }
        }
        0x2 => {
            let ip = |i: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&body[i..i + 16]);
                IpAddr::from(octets)
            };
            ProxiedAddresses::Proxied {
                source: SocketAddr::new(ip(0), port_at(32)),
                destination: SocketAddr::new(ip(16), port_at(34)),
            }
        }
        _ => ProxiedAddresses::Local,
    };
    complete(addresses)
}

/// A version 2 header for `source` → `destination` (both of one family), for tests
/// and tools.
///
/// ```
/// use smtp_server::proxy::{encode_v2, parse, Parsed, ProxiedAddresses};
/// let (source, destination) = ("192.0.2.1:50000".parse().unwrap(), "198.51.100.1:25".parse().unwrap());
/// let header = encode_v2(source, destination);
/// assert_eq!(parse(&header), Ok(Parsed::Complete {
///     len: header.len(),
///     addresses: ProxiedAddresses::Proxied { source, destination },
/// }));
/// ```
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x11, 0, 12]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.extend_from_slice(&[0x21, 0, 36]);
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxied(source: &str, destination: &str) -> ProxiedAddresses {
        ProxiedAddresses::Proxied {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    fn complete(input: &[u8]) -> (usize, ProxiedAddresses) {
        match parse(input) {
            Ok(Parsed::Complete { len, addresses }) => (len, addresses),
            other => panic!("{other:?} for {input:?}"),
        }
    }

    #[test]
    fn v1_lines() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.25 50123 25\r\n";
        assert_eq!(
            complete(line),
            (line.len(), proxied("192.0.2.1:50123", "198.51.100.25:25"))
        );
        let line = b"PROXY TCP6 2001:db8::1 2001:db8::25 65535 587\r\nQUIT\r\n";
        assert_eq!(
            complete(line),
            (
                line.len() - 6,
                proxied("[2001:db8::1]:65535", "[2001:db8::25]:587")
            )
        );
        for unknown in [
            &b"PROXY UNKNOWN\r\n"[..],
            b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
        ] {
            assert_eq!(complete(unknown), (unknown.len(), ProxiedAddresses::Local));
        }
        // The specification's worst case is exactly 107 bytes: taken.
        let longest = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(longest.len(), V1_MAX_LEN);
        assert_eq!(complete(longest).0, V1_MAX_LEN);
    }

    #[test]
    fn v1_truncated_is_incomplete_at_every_split() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.25 50123 25\r\n";
        for n in 0..line.len() {
            assert_eq!(parse(&line[..n]), Ok(Parsed::Incomplete), "{n} bytes");
        }
    }

    #[test]
    fn v1_too_long() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX_LEN, b'x');
        assert_eq!(parse(&line), Err(ProxyError::TooLong));
        line.extend_from_slice(b"\r\n");
        assert_eq!(parse(&line), Err(ProxyError::TooLong));
        // 106 bytes without an end: maybe the end comes.
        assert_eq!(parse(&line[..V1_MAX_LEN - 1]), Ok(Parsed::Incomplete));
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.25 50123 25\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.25 50123\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.25 50123 25 7\r\n",
            b"PROXY TCP4  192.0.2.1 198.51.100.25 50123 25\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.25 50123 25\r\n",
            b"PROXY TCP6 192.0.2.1 2001:db8::1 50123 25\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.25 65536 25\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.25 +80 25\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.25 080 25\r\n",
            b"PROXY TCP4 192.0.2.256 198.51.100.25 80 25\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.25 80 25\r\n",
            b"PROXY tcp4 192.0.2.1 198.51.100.25 80 25\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.25 80 \xff\r\n",
            b"PROXY \r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyError::Malformed(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                parse(bad)
            );
        }
    }

    #[test]
    fn wrong_signature() {
        for bad in [
            &b"EHLO client.test\r\n"[..],
            b"proxy TCP4 192.0.2.1 198.51.100.25 80 25\r\n",
            b"\x16\x03\x01\x02\x00", // a TLS ClientHello
            b"\r\n\r\n\0\r\nQUIT\r",
            b"PROXYTCP4",
            b"\r\n\r\n\x01",
        ] {
            assert_eq!(parse(bad), Err(ProxyError::Signature), "{bad:?}");
        }
    }

    #[test]
    fn v2_headers() {
        let header = encode_v2(
            "192.0.2.1:50000".parse().unwrap(),
            "198.51.100.1:25".parse().unwrap(),
        );
        assert_eq!(header.len(), 28);
        assert_eq!(
            complete(&header),
            (28, proxied("192.0.2.1:50000", "198.51.100.1:25"))
        );
        let header = encode_v2(
            "[2001:db8::1]:1".parse().unwrap(),
            "[2001:db8::2]:2".parse().unwrap(),
        );
        assert_eq!(
            complete(&header),
            (52, proxied("[2001:db8::1]:1", "[2001:db8::2]:2"))
        );
        // LOCAL: the connection's own addresses, whatever follows.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(complete(&local), (16, ProxiedAddresses::Local));
        // AF_UNIX and UDP: the connection's own addresses.
        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 216]);
        unix.resize(16 + 216, b'x');
        assert_eq!(complete(&unix), (232, ProxiedAddresses::Local));
        let mut udp = encode_v2(
            "192.0.2.1:5".parse().unwrap(),
            "192.0.2.2:6".parse().unwrap(),
        );
        udp[13] = 0x12;
        assert_eq!(complete(&udp), (28, ProxiedAddresses::Local));
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let mut header = encode_v2(
            "192.0.2.1:50000".parse().unwrap(),
            "198.51.100.1:25".parse().unwrap(),
        );
        // PP2_TYPE_ALPN "smtp" and PP2_TYPE_UNIQUE_ID of 3 bytes.
        let tlvs = [0x01, 0, 4, b's', b'm', b't', b'p', 0x05, 0, 3, 1, 2, 3];
        header.extend_from_slice(&tlvs);
        header[15] += tlvs.len() as u8;
        header.extend_from_slice(b"EHLO");
        assert_eq!(
            complete(&header),
            (
                28 + tlvs.len(),
                proxied("192.0.2.1:50000", "198.51.100.1:25")
            )
        );
    }

    #[test]
    fn v2_truncated_is_incomplete_at_every_split() {
        let header = encode_v2(
            "[2001:db8::1]:1".parse().unwrap(),
            "[2001:db8::2]:2".parse().unwrap(),
        );
        for n in 0..header.len() {
            assert_eq!(parse(&header[..n]), Ok(Parsed::Incomplete), "{n} bytes");
        }
    }

    #[test]
    fn v2_oversized_and_malformed() {
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&big), Err(ProxyError::TooLong));
        let base = encode_v2(
            "192.0.2.1:50000".parse().unwrap(),
            "198.51.100.1:25".parse().unwrap(),
        );
        let with = |i: usize, b: u8| {
            let mut h = base.clone();
            h[i] = b;
            h
        };
        for (bad, why) in [
            (with(12, 0x11), "version 1 in a v2 header"),
            (with(12, 0x22), "command 2"),
            (with(13, 0x41), "family 4"),
            (with(13, 0x13), "transport 3"),
            (with(15, 8), "addresses longer than the header"),
            (with(13, 0x21), "IPv6 in 12 bytes"),
        ] {
            assert!(
                matches!(parse(&bad), Err(ProxyError::Malformed(_))),
                "{why}: {:?}",
                parse(&bad)
            );
        }
    }
}
