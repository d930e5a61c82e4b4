//! The DNS lookups of SPF, through the Verifier's hickory resolver and a cache of the
//! answers, parsed, until their TTL ends ([`SpfDns`]).
//!
//! Names are built label by label from their bytes, never parsed from text: a
//! domain-spec may hold any visible character (`foo:bar/baz.example.com`, or a space
//! from `%_`), and the query must carry exactly those bytes (RFC 7208 §7.1).
//!
//! TXT answers are read record by record (RFC 7208 §3.3: the strings of one record are
//! joined with nothing between them; records are never joined). A TXT record with no
//! string at all (RDLENGTH 0, which RFC 1035 does not allow) is an empty record, which
//! is no SPF record, so the other records of the answer still count. hickory-proto
//! 0.26 refuses such an answer as a whole (`Message::read_records` returns
//! `DecodeError::InvalidEmptyRecord` for an empty RDATA outside an UPDATE), so the
//! resolver gives an error for it; that error, and only that one, makes us ask the
//! name servers again ourselves ([`SpfDns::raw_txt`]): the same query over UDP (TCP
//! when truncated), the answer read with hickory's own header, question and record
//! decoders, but record by record, where an empty RDATA is `RData::Update0(TXT)`: a
//! TXT record of no text. The servers are those given to
//! [`crate::Verifier::with_nameservers`], by default the system's (`/etc/resolv.conf`).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::ProtocolConfig;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::ProtoError;
use hickory_resolver::proto::op::{Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::proto::serialize::binary::{BinDecodable, BinDecoder, DecodeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::record::{Record as SpfRecord, is_spf};
use crate::cache::TtlCache;

/// How a lookup ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer<T> {
    /// The records of the type asked for (never empty).
    Found(Vec<T>),
    /// NXDOMAIN, or no record of that type: a "void lookup" (§4.6.4).
    Void,
    /// A DNS error (an RCODE other than 0 and 3) or no answer in time.
    Failed,
}

/// Most answers the SPF lookups keep (see [`SpfDns`]).
const CACHE_SIZE: usize = 10_000;

/// Largest TXT answer kept (the text of its records, in octets): the cache's memory
/// stays bounded (RFC 7208 §3.4 asks SPF records to fit in 450 octets; larger answers
/// are asked each time, as before).
const MAX_CACHED_TXT: usize = 2048;

/// The TXT records at a name, with the SPF record selected and parsed from them at
/// most once (while the answer is cached, every check of the domain shares the parse).
#[derive(Debug)]
pub(crate) struct TxtAnswer {
    /// The records, each one's strings joined.
    pub(crate) answer: Answer<Vec<u8>>,
    /// The SPF record among them: `None` when there is none, `Err` (the reason) when
    /// there are several or it does not parse.
    spf: OnceLock<Result<Option<Arc<SpfRecord>>, String>>,
}

impl TxtAnswer {
    fn new(answer: Answer<Vec<u8>>) -> Arc<Self> {
        Arc::new(Self {
            answer,
            spf: OnceLock::new(),
        })
    }

    /// The one SPF record of these TXT records (RFC 7208 §4.5), parsed; `domain` names
    /// the domain in the reason of an error. Only for a [`Answer::Found`] answer (else
    /// `Ok(None)`).
    pub(crate) fn spf_record(&self, domain: &str) -> Result<Option<Arc<SpfRecord>>, String> {
        self.spf
            .get_or_init(|| {
                let Answer::Found(records) = &self.answer else {
                    return Ok(None);
                };
                let mut spf = records.iter().filter(|txt| is_spf(txt));
                let Some(first) = spf.next() else {
                    return Ok(None);
                };
                if spf.next().is_some() {
                    return Err(format!("{domain} has several SPF records"));
                }
                SpfRecord::parse(first)
                    .map(|r| Some(Arc::new(r)))
                    .map_err(|why| format!("{domain}: {why}"))
            })
            .clone()
    }
}

/// A cached answer.
#[derive(Clone, Debug)]
enum Cached {
    Txt(Arc<TxtAnswer>),
    Addresses(Answer<IpAddr>),
    Names(Answer<String>),
}

/// The lookups of SPF evaluations.
///
/// Answers (found, or NXDOMAIN / no record of the type) are kept in a cache of parsed
/// values until their TTL ends (for a negative answer, the negative TTL of the zone's
/// SOA as the resolver reports it; none reported: not kept), at most
/// [`crate::cache::MAX_TTL`] and [`CACHE_SIZE`] answers (TXT answers of at most
/// [`MAX_CACHED_TXT`] octets): a domain checked again within
/// its TTL costs a hash lookup, not a resolver round trip and a parse. Failures are
/// never kept.
#[derive(Clone)]
pub(crate) struct SpfDns {
    resolver: TokioResolver,
    /// The name servers to ask directly (see the module documentation); `None`: the
    /// system's.
    servers: Option<Arc<[SocketAddr]>>,
    cache: Arc<TtlCache<(Box<str>, RecordType), Cached>>,
}

impl SpfDns {
    pub(crate) fn new(resolver: TokioResolver) -> Self {
        Self {
            resolver,
            servers: None,
            cache: Arc::new(TtlCache::new(CACHE_SIZE)),
        }
    }

    /// Asks `servers` directly when the resolver cannot decode a TXT answer.
    pub(crate) fn set_servers(&mut self, servers: Vec<SocketAddr>) {
        self.servers = Some(servers.into());
    }

    /// The TXT records at `name`, each record's strings joined.
    pub(crate) async fn txt(&self, name: &str) -> Arc<TxtAnswer> {
        let key = (Box::from(name), RecordType::TXT);
        if let Some(Cached::Txt(answer)) = self.cache.get(&key) {
            return answer;
        }
        match self.lookup(name, RecordType::TXT, txt_text).await {
            Err(Undecodable(query)) => TxtAnswer::new(self.raw_txt(query).await),
            Ok((answer, ttl)) => {
                let size: usize = match &answer {
                    Answer::Found(records) => records.iter().map(Vec::len).sum(),
                    Answer::Void | Answer::Failed => 0,
                };
                let answer = TxtAnswer::new(answer);
                if size <= MAX_CACHED_TXT {
                    self.cache.put(key, Cached::Txt(Arc::clone(&answer)), ttl);
                }
                answer
            }
        }
    }

    /// The addresses of `name` of the client's family (A for IPv4, AAAA for IPv6).
    pub(crate) async fn addresses(&self, name: &str, ipv6: bool) -> Answer<IpAddr> {
        let rtype = if ipv6 {
            RecordType::AAAA
        } else {
            RecordType::A
        };
        let key = (Box::from(name), rtype);
        if let Some(Cached::Addresses(answer)) = self.cache.get(&key) {
            return answer;
        }
        let Ok((answer, ttl)) = self.lookup(name, rtype, RData::ip_addr).await else {
            return Answer::Failed;
        };
        self.cache.put(key, Cached::Addresses(answer.clone()), ttl);
        answer
    }

    /// The exchanges of the MX records at `name` (lowercase, without the final dot;
    /// the root, a null MX, as an empty string).
    pub(crate) async fn mx(&self, name: &str) -> Answer<String> {
        self.names(name, RecordType::MX, |data| match data {
            RData::MX(mx) => Some(text(&mx.exchange)),
            _ => None,
        })
        .await
    }

    /// The names of the PTR records of `ip` (lowercase, without the final dot).
    pub(crate) async fn ptr(&self, ip: IpAddr) -> Answer<String> {
        self.names(&reverse_name(ip), RecordType::PTR, |data| match data {
            RData::PTR(ptr) => Some(text(&ptr.0)),
            _ => None,
        })
        .await
    }

    /// A lookup of names (MX, PTR), through the cache.
    async fn names(
        &self,
        name: &str,
        rtype: RecordType,
        read: impl Fn(&RData) -> Option<String>,
    ) -> Answer<String> {
        let key = (Box::from(name), rtype);
        if let Some(Cached::Names(answer)) = self.cache.get(&key) {
            return answer;
        }
        let Ok((answer, ttl)) = self.lookup(name, rtype, read).await else {
            return Answer::Failed;
        };
        self.cache.put(key, Cached::Names(answer.clone()), ttl);
        answer
    }

    /// One lookup through the resolver, and how long its answer may be kept (zero for
    /// a failure, or a negative answer without a negative TTL); `Err` when its answer
    /// could not be decoded because a record has an empty RDATA.
    async fn lookup<T>(
        &self,
        name: &str,
        rtype: RecordType,
        read: impl Fn(&RData) -> Option<T>,
    ) -> Result<(Answer<T>, Duration), Undecodable> {
        let Some(query) = query_name(name) else {
            return Ok((Answer::Void, Duration::ZERO));
        };
        Ok(match self.resolver.lookup(query.clone(), rtype).await {
            Ok(lookup) => {
                let found: Vec<T> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .filter_map(|r| read(&r.data))
                    .collect();
                let ttl = lookup
                    .valid_until()
                    .saturating_duration_since(std::time::Instant::now());
                if found.is_empty() {
                    (Answer::Void, ttl)
                } else {
                    (Answer::Found(found), ttl)
                }
            }
            Err(NetError::Proto(ProtoError::Decode(DecodeError::InvalidEmptyRecord))) => {
                return Err(Undecodable(query));
            }
            Err(e) => match crate::dns::negative_ttl(&e) {
                Some(ttl) => (Answer::Void, ttl),
                None => {
                    tracing::debug!(name, %rtype, error = %e, "SPF: DNS lookup failed");
                    (Answer::Failed, Duration::ZERO)
                }
            },
        })
    }

    /// The TXT records at `query`, asked of the name servers directly and read record
    /// by record (see the module documentation).
    async fn raw_txt(&self, query: Name) -> Answer<Vec<u8>> {
        let id = random_id();
        let mut message = Message::new(id, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(query.clone(), RecordType::TXT));
        let Ok(wire) = message.to_vec() else {
            return Answer::Failed;
        };
        let servers: &[SocketAddr] = match &self.servers {
            Some(servers) => servers,
            None => system_servers(),
        };
        let timeout = self.resolver.options().timeout;
        for server in servers {
            match tokio::time::timeout(timeout, exchange(*server, &wire, id, timeout)).await {
                Ok(Some(answer)) => return answer,
                _ => continue,
            }
        }
        tracing::debug!(%query, "SPF: no server gave a readable TXT answer");
        Answer::Failed
    }
}

/// A TXT record's text: its strings joined; an empty RDATA is a record of no text.
fn txt_text(data: &RData) -> Option<Vec<u8>> {
    match data {
        RData::TXT(txt) => Some(txt.txt_data.iter().flatten().copied().collect()),
        RData::Update0(RecordType::TXT) => Some(Vec::new()),
        _ => None,
    }
}

/// A TXT answer the resolver could not decode (a record with an empty RDATA), for the
/// name it asked.
struct Undecodable(Name);

/// The system's name servers (`/etc/resolv.conf`), read once.
fn system_servers() -> &'static [SocketAddr] {
    static SERVERS: OnceLock<Vec<SocketAddr>> = OnceLock::new();
    SERVERS.get_or_init(|| match hickory_resolver::system_conf::read_system_conf() {
        Ok((config, _)) => config
            .name_servers()
            .iter()
            .filter_map(|ns| {
                ns.connections
                    .iter()
                    .find(|c| matches!(c.protocol, ProtocolConfig::Udp))
                    .map(|c| SocketAddr::new(ns.ip, c.port))
            })
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "SPF: cannot read the system's name servers");
            Vec::new()
        }
    })
}

/// A query ID.
fn random_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (hasher.finish() & 0xffff) as u16
}

/// One query to `server` over UDP, again over TCP when the answer is truncated;
/// `None` when the server gave no usable answer.
async fn exchange(
    server: SocketAddr,
    wire: &[u8],
    id: u16,
    timeout: Duration,
) -> Option<Answer<Vec<u8>>> {
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(local).await.ok()?;
    socket.connect(server).await.ok()?;
    socket.send(wire).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let reply = loop {
        let n = socket.recv(&mut buf).await.ok()?;
        // A stray datagram (another ID) is not the answer.
        if buf.get(..2) == Some(&id.to_be_bytes()[..]) {
            break buf[..n].to_vec();
        }
    };
    match decode_txt(&reply)? {
        Decoded::Truncated => {
            let tcp = tokio::time::timeout(timeout, exchange_tcp(server, wire, id));
            decode_txt(&tcp.await.ok()??).and_then(|d| match d {
                Decoded::Answer(answer) => Some(answer),
                Decoded::Truncated => None,
            })
        }
        Decoded::Answer(answer) => Some(answer),
    }
}

/// One query to `server` over TCP: the raw answer.
async fn exchange_tcp(server: SocketAddr, wire: &[u8], id: u16) -> Option<Vec<u8>> {
    let mut stream = tokio::net::TcpStream::connect(server).await.ok()?;
    let len = u16::try_from(wire.len()).ok()?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(wire);
    stream.write_all(&framed).await.ok()?;
    let len = stream.read_u16().await.ok()?;
    let mut reply = vec![0u8; usize::from(len)];
    stream.read_exact(&mut reply).await.ok()?;
    (reply.get(..2) == Some(&id.to_be_bytes()[..])).then_some(reply)
}

/// A raw answer read.
enum Decoded {
    Answer(Answer<Vec<u8>>),
    Truncated,
}

/// The TXT records of a raw answer, read record by record; `None` for an answer that
/// is no usable response (not a response, a DNS error, undecodable).
fn decode_txt(reply: &[u8]) -> Option<Decoded> {
    let mut decoder = BinDecoder::new(reply);
    let header = Header::read(&mut decoder).ok()?;
    if header.metadata.message_type != MessageType::Response {
        return None;
    }
    if header.metadata.truncation {
        return Some(Decoded::Truncated);
    }
    match header.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Some(Decoded::Answer(Answer::Void)),
        _ => return None,
    }
    Message::read_queries(&mut decoder, usize::from(header.counts.queries)).ok()?;
    let mut records = Vec::new();
    for _ in 0..header.counts.answers {
        let record = Record::read(&mut decoder).ok()?;
        if record.record_type() == RecordType::TXT
            && let Some(text) = txt_text(&record.data)
        {
            records.push(text);
        }
    }
    Some(Decoded::Answer(if records.is_empty() {
        Answer::Void
    } else {
        Answer::Found(records)
    }))
}

/// `name` (dotted, without the final dot) as a fully qualified hickory name, byte for
/// byte; `None` when a label is empty or over 63 octets.
fn query_name(name: &str) -> Option<Name> {
    let mut name = Name::from_labels(name.split('.').map(str::as_bytes)).ok()?;
    name.set_fqdn(true);
    Some(name)
}

/// A name as text: its labels' bytes joined with dots, lowercase.
fn text(name: &Name) -> String {
    let labels: Vec<String> = name
        .iter()
        .map(|label| String::from_utf8_lossy(label).to_ascii_lowercase())
        .collect();
    labels.join(".")
}

/// `d.c.b.a.in-addr.arpa`, or the 32 nibbles of an IPv6 address under `ip6.arpa`.
fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut out = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                out.push(hex(byte & 15));
                out.push('.');
                out.push(hex(byte >> 4));
                out.push('.');
            }
            out.push_str("ip6.arpa");
            out
        }
    }
}

fn hex(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).unwrap_or('0')
}

/// Runs `futures` at once and gives their outputs in order (a small `join_all`: the
/// address lookups of one mechanism go out together).
pub(crate) async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx: &mut Context<'_>| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_name("192.0.2.3".parse().unwrap()),
            "3.2.0.192.in-addr.arpa"
        );
        assert_eq!(
            reverse_name("2001:db8::cb01".parse().unwrap()),
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }

    #[test]
    fn names_keep_their_bytes() {
        let name = query_name("foo:bar/baz.example.com").unwrap();
        assert_eq!(name.num_labels(), 3);
        assert_eq!(text(&name), "foo:bar/baz.example.com");
        assert!(query_name("a..b").is_none());
        assert!(query_name(&"a".repeat(64)).is_none());
    }

    #[tokio::test]
    async fn join_keeps_order() {
        let out = join_all(vec![
            Box::pin(async {
                tokio::task::yield_now().await;
                1
            }) as Pin<Box<dyn Future<Output = i32> + Send>>,
            Box::pin(async { 2 }),
        ])
        .await;
        assert_eq!(out, vec![1, 2]);
    }
}
