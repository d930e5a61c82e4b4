//! A DNS server for tests: authoritative for zones given as text, on a free port of
//! 127.0.0.1, UDP and TCP. Enabled by the `test-server` feature.
//!
//! ```no_run
//! # async fn example() {
//! use dns_mx::testing::TestDns;
//! let dns = TestDns::start(&["$ORIGIN example.test.\n@ 3600 IN SOA ns root 1 3600 600 86400 60\n@ 300 IN MX 10 mx\nmx 300 IN A 127.0.0.1\n"]).await;
//! let nameserver = dns.addr(); // give this to MxConfig::nameservers
//! # }
//! ```
//!
//! Records that zone text cannot say (TXT strings with arbitrary bytes, several strings
//! or none, unknown types such as SPF (99), names with odd characters) and names whose
//! queries time out are built in code with [`TestDns::builder`]:
//!
//! ```no_run
//! # async fn example() {
//! use dns_mx::testing::TestDns;
//! use hickory_server::proto::rr::{Name, RData, Record, rdata::TXT};
//! let name = Name::from_ascii("example.test.").unwrap();
//! let txt = RData::TXT(TXT::from_bytes(vec![b"v=spf1 ", b"-all"]));
//! let dns = TestDns::builder()
//!     .record(Record::from_rdata(name, 300, txt))
//!     .timeout(Name::from_ascii("slow.example.test.").unwrap())
//!     .start()
//!     .await;
//! # }
//! ```

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::proto::op::{Header, HeaderCounts, MessageType, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::SOA;
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::proto::serialize::txt::Parser;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};

/// A running test DNS server; it stops when dropped.
pub struct TestDns {
    addr: SocketAddr,
    _server: Server<Handler>,
}

impl std::fmt::Debug for TestDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestDns({})", self.addr)
    }
}

impl TestDns {
    /// Serves `zones` (zone-file text, each with its `$ORIGIN` and an SOA record).
    /// Names outside every zone are answered REFUSED, which resolvers treat as a
    /// temporary failure, like SERVFAIL.
    ///
    /// # Panics
    ///
    /// On a zone that does not parse or a socket that cannot be bound: a test setup error.
    pub async fn start(zones: &[&str]) -> Self {
        let mut catalog = Catalog::new();
        for text in zones {
            let (origin, records) = Parser::new(*text, None, None)
                .parse()
                .unwrap_or_else(|e| panic!("bad zone: {e}\n{text}"));
            let handler = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
                origin.clone(),
                records,
                ZoneType::Primary,
                AxfrPolicy::Deny,
            )
            .unwrap_or_else(|e| panic!("bad zone {origin}: {e}"));
            catalog.upsert(origin.into(), vec![Arc::new(handler)]);
        }
        Self::serve(Handler {
            catalog,
            timeouts: HashMap::new(),
        })
        .await
    }

    /// A server built in code: records for any names (it is authoritative for the
    /// whole tree, so every other name is NXDOMAIN) and names that time out.
    pub fn builder() -> TestDnsBuilder {
        TestDnsBuilder::default()
    }

    /// Serves `records` (any names, any types; see [`TestDns::builder`]).
    ///
    /// # Panics
    ///
    /// As [`TestDnsBuilder::start`].
    pub async fn start_records(records: Vec<Record>) -> Self {
        let mut builder = Self::builder();
        for record in records {
            builder = builder.record(record);
        }
        builder.start().await
    }

    async fn serve(handler: Handler) -> Self {
        // UDP and TCP on one port: take a free UDP port, then the same TCP port, which
        // another test may hold; then try another.
        let mut attempt = 0;
        let (udp, tcp, addr) = loop {
            attempt += 1;
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("udp: {e}"));
            let addr = udp.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
            match tokio::net::TcpListener::bind(addr).await {
                Ok(tcp) => break (udp, tcp, addr),
                Err(e) if attempt >= 20 => panic!("tcp: {e}"),
                Err(_) => continue,
            }
        };
        let mut server = Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 4096);
        Self {
            addr,
            _server: server,
        }
    }

    /// Where it listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Records and timeouts for a [`TestDns`] built in code (from [`TestDns::builder`]).
#[derive(Debug, Default)]
pub struct TestDnsBuilder {
    records: Vec<Record>,
    timeouts: Vec<Name>,
}

impl TestDnsBuilder {
    /// Adds a record. Its name may hold any bytes (build it with
    /// [`Name::from_labels`]); records of a type hickory does not know, such as SPF
    /// (99), go in as [`RData::Unknown`]. Identical records of one name and type are
    /// served once, as DNS does.
    pub fn record(mut self, record: Record) -> Self {
        self.records.push(record);
        self
    }

    /// Makes queries for `name` time out: the server does not answer (on UDP or TCP)
    /// a query for `name` of a type that `name` holds no record of. A name with no
    /// records at all times out for every type; one with some records (added with
    /// [`record`](Self::record)) answers those types and times out for the others, like a
    /// broken server that drops queries for types it does not know.
    pub fn timeout(mut self, name: Name) -> Self {
        self.timeouts.push(name);
        self
    }

    /// Starts the server on a free port of 127.0.0.1.
    ///
    /// # Panics
    ///
    /// When a record cannot be added (such as a CNAME beside other records at one name)
    /// or a socket cannot be bound: a test setup error.
    pub async fn start(self) -> TestDns {
        let root = Name::root();
        let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            root.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        let soa = SOA::new(
            Name::from_labels([&b"ns"[..], b"test"]).unwrap_or_else(|e| panic!("name: {e}")),
            Name::from_labels([&b"root"[..], b"test"]).unwrap_or_else(|e| panic!("name: {e}")),
            1,
            3600,
            600,
            86400,
            60,
        );
        if !zone.upsert_mut(Record::from_rdata(root.clone(), 3600, RData::SOA(soa)), 1) {
            panic!("cannot add the SOA record");
        }
        let mut timeouts: HashMap<LowerName, HashSet<RecordType>> = self
            .timeouts
            .iter()
            .map(|name| (LowerName::new(name), HashSet::new()))
            .collect();
        let mut added: Vec<&Record> = Vec::with_capacity(self.records.len());
        for record in &self.records {
            if added.contains(&record) {
                continue;
            }
            added.push(record);
            if let Some(types) = timeouts.get_mut(&LowerName::new(&record.name)) {
                types.insert(record.record_type());
            }
            if !zone.upsert_mut(record.clone(), 1) {
                panic!("cannot add record {record}");
            }
        }
        let mut catalog = Catalog::new();
        catalog.upsert(root.into(), vec![Arc::new(zone)]);
        TestDns::serve(Handler { catalog, timeouts }).await
    }
}

/// The catalog, behind a filter that drops the queries meant to time out.
struct Handler {
    catalog: Catalog,
    /// Names that time out, with the record types they answer anyway.
    timeouts: HashMap<LowerName, HashSet<RecordType>>,
}

impl Handler {
    /// Whether `request` must get no answer.
    fn drops(&self, request: &Request) -> bool {
        request.queries.queries().iter().any(|query| {
            self.timeouts
                .get(query.name())
                .is_some_and(|answered| !answered.contains(&query.query_type()))
        })
    }
}

// `RequestHandler` is declared with `#[async_trait]`; this is that macro's expansion,
// written out so that the crate needs no dependency on async-trait.
impl RequestHandler for Handler {
    fn handle_request<'life0, 'life1, 'async_trait, R, T>(
        &'life0 self,
        request: &'life1 Request,
        response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'async_trait>>
    where
        R: 'async_trait + ResponseHandler,
        T: 'async_trait + Time,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            if self.drops(request) {
                // No response at all: the client times out. The SERVFAIL header
                // below is only what the server records; nothing is sent.
                let mut metadata = Metadata::new(
                    request.metadata.id,
                    MessageType::Response,
                    request.metadata.op_code,
                );
                metadata.response_code = ResponseCode::ServFail;
                return ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                });
            }
            self.catalog
                .handle_request::<R, T>(request, response_handle)
                .await
        })
    }
}

/// A "nameserver" that never answers: queries to it time out.
///
/// # Panics
///
/// When the socket cannot be bound.
pub async fn silent_nameserver() -> (SocketAddr, tokio::net::UdpSocket) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("udp: {e}"));
    (
        socket.local_addr().unwrap_or_else(|e| panic!("addr: {e}")),
        socket,
    )
}
