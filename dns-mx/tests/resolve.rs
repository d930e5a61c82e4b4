//! MX routing against a real DNS server on loopback, with real zones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::time::Duration;

use dns_mx::testing::{TestDns, silent_nameserver};
use dns_mx::{MxConfig, MxResolver, RouteError};

const ZONE: &str = "
$ORIGIN example.test.
@        3600 IN SOA ns.example.test. root.example.test. 1 3600 600 86400 60
@         300 IN MX 10 a
@         300 IN MX 20 b
a         300 IN A 192.0.2.10
a         300 IN AAAA 2001:db8::10
b         300 IN A 192.0.2.20
equal     300 IN MX 10 a
equal     300 IN MX 10 b
implicit  300 IN A 192.0.2.30
nullmx    300 IN MX 0 .
literal   300 IN MX 10 192.0.2.40
cname     300 IN MX 10 alias
alias     300 IN CNAME a
self      300 IN MX 10 b
self      300 IN MX 20 mx.ours.test.
self      300 IN MX 30 a
onlyself  300 IN MX 10 mx.ours.test.
nothing   300 IN TXT \"no mail here\"
";

async fn resolver(dns: &TestDns) -> MxResolver {
    MxResolver::new(MxConfig {
        nameservers: vec![dns.addr()],
        our_names: vec!["mx.ours.test".into()],
        timeout: Duration::from_secs(2),
        ..MxConfig::default()
    })
    .unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn mx_order_and_addresses() {
    let dns = TestDns::start(&[ZONE]).await;
    let r = resolver(&dns).await;
    let hosts = r.route("example.test").await.unwrap();
    assert_eq!(
        hosts
            .iter()
            .map(|h| (h.name.as_str(), h.preference))
            .collect::<Vec<_>>(),
        [("a.example.test", 10), ("b.example.test", 20)]
    );
    assert!(
        hosts[0].addresses.contains(&ip("192.0.2.10"))
            && hosts[0].addresses.contains(&ip("2001:db8::10"))
    );
    assert_eq!(hosts[1].addresses, [ip("192.0.2.20")]);
    // Names are case-insensitive and may end with a dot.
    assert_eq!(r.route("EXAMPLE.test.").await.unwrap().len(), 2);
}

#[tokio::test]
async fn equal_preferences_vary_between_lookups() {
    let dns = TestDns::start(&[ZONE]).await;
    let r = resolver(&dns).await;
    let mut firsts = std::collections::HashSet::new();
    for _ in 0..40 {
        firsts.insert(r.route("equal.example.test").await.unwrap()[0].name.clone());
    }
    assert_eq!(
        firsts.len(),
        2,
        "both hosts come first sometimes: {firsts:?}"
    );
}

#[tokio::test]
async fn implicit_null_literal_cname_self() {
    let dns = TestDns::start(&[ZONE]).await;
    let r = resolver(&dns).await;
    let implicit = r.route("implicit.example.test").await.unwrap();
    assert_eq!(
        (implicit[0].name.as_str(), implicit[0].addresses.as_slice()),
        ("implicit.example.test", &[ip("192.0.2.30")][..])
    );
    assert_eq!(
        r.route("nullmx.example.test").await,
        Err(RouteError::NullMx)
    );
    assert_eq!(RouteError::NullMx.status(), (556, "5.1.10"));
    assert_eq!(
        r.route("literal.example.test").await,
        Err(RouteError::NoUsableMx),
        "an IP in an MX is not used as an address"
    );
    let cname = r.route("cname.example.test").await.unwrap();
    assert!(
        cname[0].addresses.contains(&ip("192.0.2.10")),
        "a CNAME'd exchange is tolerated"
    );
    let selfmx = r.route("self.example.test").await.unwrap();
    assert_eq!(
        selfmx.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
        ["b.example.test"],
        "only hosts better than us"
    );
}

#[tokio::test]
async fn errors_permanent_and_temporary() {
    let dns = TestDns::start(&[ZONE]).await;
    let r = resolver(&dns).await;
    assert_eq!(
        r.route("onlyself.example.test").await,
        Err(RouteError::Loop)
    );
    assert_eq!(
        r.route("missing.example.test").await,
        Err(RouteError::NoSuchDomain)
    );
    assert_eq!(RouteError::NoSuchDomain.status(), (550, "5.1.2"));
    assert_eq!(
        r.route("nothing.example.test").await,
        Err(RouteError::NoUsableMx),
        "no MX and no address"
    );
    // A zone this server does not serve: REFUSED, a temporary failure, no fallback to A.
    let refused = r.route("elsewhere.test").await.unwrap_err();
    assert!(!refused.is_permanent(), "{refused:?}");
    // A nameserver that never answers: a timeout, temporary.
    let (silent, _socket) = silent_nameserver().await;
    let r = MxResolver::new(MxConfig {
        nameservers: vec![silent],
        timeout: Duration::from_millis(300),
        ..MxConfig::default()
    })
    .unwrap();
    let timeout = r.route("example.test").await.unwrap_err();
    assert!(matches!(timeout, RouteError::Temporary(_)), "{timeout:?}");
    assert_eq!(timeout.status(), (451, "4.4.3"));
}

#[tokio::test]
async fn address_literals_skip_dns() {
    let (silent, _socket) = silent_nameserver().await;
    let r = MxResolver::new(MxConfig {
        nameservers: vec![silent],
        ..MxConfig::default()
    })
    .unwrap();
    assert_eq!(
        r.route("[192.0.2.1]").await.unwrap()[0].addresses,
        [ip("192.0.2.1")]
    );
    assert_eq!(
        r.route("[IPv6:2001:db8::1]").await.unwrap()[0].addresses,
        [ip("2001:db8::1")]
    );
    assert_eq!(r.route("[nonsense]").await, Err(RouteError::InvalidDomain));
}

/// Every lookup is counted by query and outcome, into counters that a new resolver can
/// keep adding to.
#[tokio::test]
async fn lookups_are_counted_by_query_and_outcome() {
    let dns = TestDns::start(&[ZONE]).await;
    let stats = std::sync::Arc::new(dns_mx::LookupStats::default());
    let r = resolver(&dns).await.count_into(stats.clone());
    r.route("example.test").await.unwrap(); // MX, then the addresses of a and b
    let _ = r.route("missing.example.test").await; // NXDOMAIN
    let _ = r.route("nothing.example.test").await; // no MX, then no address
    let again = resolver(&dns).await.count_into(stats.clone());
    again.host("a.example.test").await.unwrap();
    // Read as a scraper would: through prometheus-client's text encoding.
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(stats));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let count = |query: &str, outcome: &str| -> u64 {
        let sample = format!("dns_lookups_total{{query=\"{query}\",result=\"{outcome}\"}} ");
        let line = text.lines().find_map(|l| l.strip_prefix(&sample));
        line.unwrap_or_else(|| panic!("no {sample} in {text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(count("mx", "answered"), 1);
    assert_eq!(count("mx", "nxdomain"), 1);
    assert_eq!(count("mx", "nodata"), 1);
    assert_eq!(count("address", "answered"), 3);
    assert_eq!(count("address", "nodata"), 1);
    assert_eq!(count("mx", "failed") + count("address", "failed"), 0);
}
