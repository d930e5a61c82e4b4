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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::serialize::txt::Parser;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};

/// A running test DNS server; it stops when dropped.
pub struct TestDns {
    addr: SocketAddr,
    _server: Server<Catalog>,
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
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("udp: {e}"));
        let addr = udp.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("tcp: {e}"));
        let mut server = Server::new(catalog);
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
