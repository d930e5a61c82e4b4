//! DNSSEC-validated lookups for DANE (RFC 7672): MX and TLSA answers with their
//! security status, from a validating resolver on loopback whose AD bit we trust.
//!
//! This module does no validation itself. As Postfix does with
//! `smtp_dns_support_level = dane`, it asks a validating resolver (Unbound, BIND,
//! Knot Resolver) with the DO and AD bits set and believes the AD bit of the answer. An
//! AD bit is only as trustworthy as the path it travelled, so the resolver must be on
//! this machine (a loopback address): [`DaneResolver::new`] refuses any other.
//!
//! ```text
//!  mx_security(domain) ─▶ MX query (DO, AD) ─▶ AD set: Secure, else Insecure; SERVFAIL: Err
//!  tlsa(mx, port, secure MX?) ─▶ A query of the MX host (CNAME chain, must be secure)
//!                             ─▶ TLSA _<port>._tcp.<host>  ─▶ Some(records) / None / Err
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::RouteError;

/// Settings of the validating resolver DANE lookups go to (`[outbound] dane_resolver`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaneConfig {
    /// The validating resolver: a loopback address (`127.0.0.1:53`, `[::1]:53`).
    pub resolver: SocketAddr,
    /// Time one query may take (UDP, then TCP when the answer is truncated). Default
    /// 5 s.
    pub timeout: Duration,
}

impl Default for DaneConfig {
    fn default() -> Self {
        Self {
            resolver: SocketAddr::from((Ipv4Addr::LOCALHOST, 53)),
            timeout: Duration::from_secs(5),
        }
    }
}

/// How far an answer can be trusted (RFC 4035 §4.3, RFC 7672 §2.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// The resolver validated the answer (AD set): a chain of signatures from a trust
    /// anchor, or a signed proof that the data does not exist.
    Secure,
    /// The answer is not signed (or not under a trust anchor): usable for routing, not
    /// for authentication.
    Insecure,
}

/// A TLSA record (RFC 6698 §2.1): which certificate or key the server must present.
/// The fields are the wire values; the TLS client decides which are usable for SMTP
/// (RFC 7672 §3.1: DANE-TA(2) and DANE-EE(3)).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TlsaRecord {
    /// Certificate usage: 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE.
    pub usage: u8,
    /// Selector: 0 the full certificate, 1 its SubjectPublicKeyInfo.
    pub selector: u8,
    /// Matching type: 0 the data itself, 1 SHA-256, 2 SHA-512.
    pub matching: u8,
    /// The certificate association data.
    pub data: Vec<u8>,
}

/// DNSSEC-aware lookups through a validating resolver on loopback.
///
/// ```no_run
/// # async fn example() -> Result<(), dns_mx::RouteError> {
/// use dns_mx::{DaneConfig, DaneResolver, Security};
/// let dane = DaneResolver::new(DaneConfig::default())?;
/// let secure = dane.mx_security("example.org").await? == Security::Secure;
/// match dane.tlsa("mx.example.org", 25, secure).await? {
///     Some(records) => println!("DANE: TLS mandatory, {} TLSA records", records.len()),
///     None => println!("no DANE: MTA-STS or opportunistic TLS"),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct DaneResolver {
    config: DaneConfig,
}

impl DaneResolver {
    /// A resolver asking `config.resolver`, which must be a loopback address: its AD
    /// bit is believed, and an AD bit that crossed a network proves nothing.
    pub fn new(config: DaneConfig) -> Result<Self, RouteError> {
        if !config.resolver.ip().is_loopback() {
            return Err(RouteError::Dane(format!(
                "the DANE resolver {} is not on loopback: its AD bit cannot be trusted \
                 (run a validating resolver such as Unbound on this machine)",
                config.resolver
            )));
        }
        Ok(Self { config })
    }

    /// The DANE policy for delivering `domain`'s mail to `mx_host` on `port`: the one
    /// call remote delivery makes per MX host. It checks that `domain`'s MX RRset is
    /// validated and lists `mx_host` (or, for a domain without MX records, that the
    /// absence is validated and `mx_host` is the domain itself), then looks up the
    /// TLSA records as [`DaneResolver::tlsa`] does, with the same outcomes:
    ///
    /// - `Ok(Some(records))`: TLS mandatory, authenticated by `records`;
    /// - `Ok(None)`: no DANE (unsigned MX RRset, host or TLSA records): MTA-STS or
    ///   opportunistic TLS;
    /// - `Err(RouteError::Dane(_))`: defer with `451 4.7.5` (a failed lookup, or an
    ///   `mx_host` that the validated MX RRset does not list: the host came from
    ///   another, unvalidated answer, and trusting it would let a forged MX record
    ///   switch DANE off).
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), dns_mx::RouteError> {
    /// use dns_mx::{DaneConfig, DaneResolver};
    /// let dane = DaneResolver::new(DaneConfig::default())?;
    /// match dane.policy("example.org", "mx.example.org", 25).await {
    ///     Ok(Some(records)) => println!("DANE: {} TLSA records", records.len()),
    ///     Ok(None) => println!("no DANE"),
    ///     Err(e) => println!("defer: {:?} {e}", e.status()),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn policy(
        &self,
        domain: &str,
        mx_host: &str,
        port: u16,
    ) -> Result<Option<Vec<TlsaRecord>>, RouteError> {
        let name = fqdn(domain)?;
        let answer = self.query(&name, RecordType::MX).await?;
        match answer.metadata.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            code => {
                return Err(RouteError::Dane(format!(
                    "DANE: the MX lookup for {domain} failed ({code}; bogus DNSSEC or an \
                     unreachable server)"
                )));
            }
        }
        if security(&answer) == Security::Insecure {
            return Ok(None);
        }
        let host = fqdn(mx_host)?;
        let exchanges: Vec<&Name> = answer
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some(&mx.exchange),
                _ => None,
            })
            .collect();
        let listed = if exchanges.is_empty() {
            host == name
        } else {
            exchanges.iter().any(|e| **e == host)
        };
        if !listed {
            return Err(RouteError::Dane(format!(
                "DANE: {mx_host} is not among the validated MX hosts of {domain}"
            )));
        }
        self.tlsa(mx_host, port, true).await
    }

    /// Whether `domain`'s MX RRset (or its signed absence) was obtained securely: the
    /// condition for looking up TLSA records of its MX hosts (RFC 7672 §2.2.1). A
    /// SERVFAIL (which a validating resolver answers for bogus data) or a timeout is a
    /// temporary failure.
    pub async fn mx_security(&self, domain: &str) -> Result<Security, RouteError> {
        let name = fqdn(domain)?;
        let answer = self.query(&name, RecordType::MX).await?;
        match answer.metadata.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => Ok(security(&answer)),
            code => Err(RouteError::Temporary(format!(
                "MX lookup for {domain} through the DANE resolver: {code}"
            ))),
        }
    }

    /// The TLSA records that authenticate `mx_host` on `port` (RFC 7672 §2.2), with
    /// these outcomes:
    ///
    /// - `Ok(Some(records))`: a secure, non-empty TLSA RRset. TLS is mandatory and the
    ///   server must match one of the records (the caller hands them to the TLS client;
    ///   a set whose records are all unusable means mandatory but unauthenticated TLS).
    /// - `Ok(None)`: no DANE for this host: the MX RRset or the host's address records
    ///   are insecure (`mx_secure` false, an insecure CNAME), or the TLSA records are
    ///   absent (signed denial) or insecure. Fall back to MTA-STS or opportunistic TLS.
    /// - `Err(RouteError::Dane(_))`: the lookup failed where a secure answer was due
    ///   (SERVFAIL: bogus signatures, unreachable servers; timeouts). Defer the delivery
    ///   (`451 4.7.5`): falling back would let an attacker downgrade by breaking DNS.
    ///
    /// An MX host that is a CNAME is followed: every step must be secure, and the
    /// TLSA records are looked for at the final name first, then at the original name
    /// (RFC 7672 §2.2.2).
    pub async fn tlsa(
        &self,
        mx_host: &str,
        port: u16,
        mx_secure: bool,
    ) -> Result<Option<Vec<TlsaRecord>>, RouteError> {
        if !mx_secure {
            return Ok(None);
        }
        let host = fqdn(mx_host)?;
        let address = self.query(&host, RecordType::A).await?;
        match address.metadata.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            code => {
                return Err(RouteError::Dane(format!(
                    "DANE: the address lookup for {mx_host} failed ({code}; bogus DNSSEC \
                     or an unreachable server)"
                )));
            }
        }
        if security(&address) == Security::Insecure {
            return Ok(None);
        }
        // The end of the (secure) CNAME chain, if any.
        let mut candidates = Vec::with_capacity(2);
        if let Some(target) = cname_target(&address, &host) {
            candidates.push(target);
        }
        candidates.push(host);
        for base in candidates {
            let owner = Name::from_ascii(format!("_{port}._tcp"))
                .and_then(|prefix| prefix.append_domain(&base))
                .map_err(|_| RouteError::InvalidDomain)?;
            let answer = self.query(&owner, RecordType::TLSA).await?;
            match answer.metadata.response_code {
                ResponseCode::NoError | ResponseCode::NXDomain => {}
                code => {
                    return Err(RouteError::Dane(format!(
                        "DANE: TLSA lookup for {} failed securely ({code}: bogus DNSSEC or \
                         an unreachable server)",
                        owner.to_ascii().trim_end_matches('.')
                    )));
                }
            }
            let records: Vec<TlsaRecord> = answer
                .answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TLSA(t) => Some(TlsaRecord {
                        usage: t.cert_usage.into(),
                        selector: t.selector.into(),
                        matching: t.matching.into(),
                        data: t.cert_data.clone(),
                    }),
                    _ => None,
                })
                .collect();
            if records.is_empty() {
                continue;
            }
            return Ok(match security(&answer) {
                Security::Secure => Some(records),
                Security::Insecure => None,
            });
        }
        Ok(None)
    }

    /// The live self-test of `mta check-config`: asks for `name`'s DNSKEY records (a
    /// name known to be signed, such as `.`) and says whether the answer came back
    /// validated. `Ok(false)` means the resolver does not validate (or has no trust
    /// anchor for `name`): DANE would never find anything secure.
    pub async fn validates(&self, name: &str) -> Result<bool, RouteError> {
        let name = if name == "." {
            Name::root()
        } else {
            fqdn(name)?
        };
        let answer = self.query(&name, RecordType::DNSKEY).await?;
        Ok(answer.metadata.response_code == ResponseCode::NoError
            && security(&answer) == Security::Secure)
    }

    /// One query with the DO and AD bits set: UDP, then TCP when truncated; each
    /// within the configured timeout.
    async fn query(&self, name: &Name, kind: RecordType) -> Result<Message, RouteError> {
        let mut request = Message::query();
        request.metadata.recursion_desired = true;
        // RFC 6840 §5.7: ask for the AD bit.
        request.metadata.authentic_data = true;
        request.add_query(Query::query(name.clone(), kind));
        let mut edns = Edns::new();
        edns.set_dnssec_ok(true).set_max_payload(1232);
        request.set_edns(edns);
        let bytes = request
            .to_vec()
            .map_err(|e| RouteError::Temporary(format!("cannot encode a DNS query: {e}")))?;
        let what = || format!("{} {kind}", name.to_ascii());
        let timeout = self.config.timeout;
        let answer = tokio::time::timeout(timeout, self.udp(&bytes))
            .await
            .map_err(|_| RouteError::Dane(format!("DANE: timeout asking for {}", what())))?
            .map_err(|e| RouteError::Dane(format!("DANE: asking for {}: {e}", what())))?;
        let answer = match parse(&answer, &request) {
            Some(m) if !m.metadata.truncation => m,
            _ => {
                let answer = tokio::time::timeout(timeout, self.tcp(&bytes))
                    .await
                    .map_err(|_| RouteError::Dane(format!("DANE: timeout asking for {}", what())))?
                    .map_err(|e| RouteError::Dane(format!("DANE: asking for {}: {e}", what())))?;
                parse(&answer, &request).ok_or_else(|| {
                    RouteError::Dane(format!("DANE: a malformed answer for {}", what()))
                })?
            }
        };
        Ok(answer)
    }

    async fn udp(&self, request: &[u8]) -> std::io::Result<Vec<u8>> {
        let local: IpAddr = match self.config.resolver {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        };
        let socket = UdpSocket::bind((local, 0)).await?;
        socket.connect(self.config.resolver).await?;
        socket.send(request).await?;
        let mut buffer = vec![0; 65535];
        let n = socket.recv(&mut buffer).await?;
        buffer.truncate(n);
        Ok(buffer)
    }

    async fn tcp(&self, request: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(self.config.resolver).await?;
        let length = u16::try_from(request.len())
            .map_err(|_| std::io::Error::other("DNS query too long"))?;
        let mut framed = length.to_be_bytes().to_vec();
        framed.extend_from_slice(request);
        stream.write_all(&framed).await?;
        let mut length = [0; 2];
        stream.read_exact(&mut length).await?;
        let mut buffer = vec![0; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut buffer).await?;
        Ok(buffer)
    }
}

/// The answer, if it parses and answers `request` (same id, same question).
fn parse(bytes: &[u8], request: &Message) -> Option<Message> {
    let answer = Message::from_vec(bytes).ok()?;
    (answer.metadata.id == request.metadata.id && answer.queries == request.queries)
        .then_some(answer)
}

fn security(answer: &Message) -> Security {
    if answer.metadata.authentic_data {
        Security::Secure
    } else {
        Security::Insecure
    }
}

/// Where a CNAME chain starting at `name` ends in `answer`, if `name` is an alias.
fn cname_target(answer: &Message, name: &Name) -> Option<Name> {
    let mut current = name.clone();
    let mut followed = false;
    // At most as many steps as there are records: a loop cannot go on forever.
    for _ in 0..answer.answers.len() {
        let next = answer.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if r.name == current => Some(target.0.clone()),
            _ => None,
        });
        match next {
            Some(target) => {
                current = target;
                followed = true;
            }
            None => break,
        }
    }
    followed.then_some(current)
}

/// `domain` as an absolute name (IDNA for a UTF-8 one).
fn fqdn(domain: &str) -> Result<Name, RouteError> {
    let mut name =
        Name::from_utf8(domain.trim_end_matches('.')).map_err(|_| RouteError::InvalidDomain)?;
    name.set_fqdn(true);
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolver_off_loopback_is_refused() {
        let config = DaneConfig {
            resolver: "192.0.2.53:53".parse().expect("an address"),
            ..DaneConfig::default()
        };
        let err = DaneResolver::new(config).expect_err("not loopback");
        assert!(err.to_string().contains("not on loopback"), "{err}");
        assert!(DaneResolver::new(DaneConfig::default()).is_ok());
        let v6 = DaneConfig {
            resolver: "[::1]:53".parse().expect("an address"),
            ..DaneConfig::default()
        };
        assert!(DaneResolver::new(v6).is_ok());
    }

    #[test]
    fn cname_chains_are_followed_to_their_end() {
        let name = |s: &str| Name::from_ascii(s).expect("a name");
        let mut answer = Message::query();
        for (from, to) in [("a.test.", "b.test."), ("b.test.", "c.test.")] {
            answer.add_answer(hickory_resolver::proto::rr::Record::from_rdata(
                name(from),
                60,
                RData::CNAME(hickory_resolver::proto::rr::rdata::CNAME(name(to))),
            ));
        }
        assert_eq!(
            cname_target(&answer, &name("a.test.")),
            Some(name("c.test."))
        );
        assert_eq!(
            cname_target(&answer, &name("b.test.")),
            Some(name("c.test."))
        );
        assert_eq!(cname_target(&answer, &name("c.test.")), None);
    }
}
