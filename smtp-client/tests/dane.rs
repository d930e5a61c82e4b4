//! DANE for SMTP (RFC 7672) end to end: zones signed at test time by Knot DNS on
//! loopback, Unbound validating them with the test's trust anchors, dns-mx's
//! `DaneResolver` asking Unbound, and this crate's client delivering over real TCP to
//! smtp-server with STARTTLS and a certificate made by rcgen (a leaf for the MX names,
//! issued by a test CA).
//!
//! The zones (`dane.test` and `_tcp.mxbogus.dane.test` signed, `plain.test` not):
//!
//! | domain | MX host | TLSA | outcome |
//! | --- | --- | --- | --- |
//! | `dane.test` | `mx` | `3 1 1` the leaf's key | delivered |
//! | `wrong.dane.test` | `mxwrong` | `3 1 1` another key | deferred before MAIL |
//! | `ta.dane.test` | `mxta` | `2 0 1` the test CA | delivered |
//! | `taname.dane.test` | `mxtaname` (not in the leaf) | `2 0 1` the test CA | deferred |
//! | `bogus.dane.test` | `mxbogus` | in a child zone whose DS is wrong | deferred |
//! | `alias.dane.test` | `alias-mx` CNAME `mx` | at `mx` | delivered |
//! | `unusable.dane.test` | `mxunusable` | `1 1 1` only (PKIX-EE) | delivered, TLS required |
//! | `nodane.dane.test` | `mxnodane` | none (signed denial) | opportunistic |
//! | `plain.test` | `mx` | `3 1 1` another key, unsigned | ignored: opportunistic |
//!
//! Skips (with a message) when knotd, keymgr, kdig or unbound is missing; under
//! `CI=true` that is a failure (`.ci/deps/dane.sh` installs them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dns_mx::{DaneConfig, DaneResolver, MxConfig, MxResolver, Security};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use smtp_client::testing::daemons::{Daemon, KnotZone, knot, knot_ds, unbound, unbound_log};
use smtp_client::{
    ClientError, DaneTls, OutboundConfig, OutboundMessage, Session, TlsConfigs, TlsPolicy, Tlsa,
};
use smtp_proto::{ForwardPath, MailParameters, RcptParameters, ReversePath};
use smtp_server::filters::{DomainSet, RelayPolicy};
use smtp_server::{
    BoxError, DataRequest, Decision, ListenerConfig, ListenerMode, Server, ServerConfig, Stages,
    filter,
};

/// The names the server's leaf certificate carries (`mxtaname.dane.test` is not one).
const LEAF_NAMES: [&str; 6] = [
    "mx.dane.test",
    "mxwrong.dane.test",
    "mxta.dane.test",
    "mxbogus.dane.test",
    "mxunusable.dane.test",
    "mx.plain.test",
];

/// The test PKI: a CA, the server's leaf (issued by it) and key, and an unrelated key.
struct Pki {
    ca: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
    leaf_key: PrivateKeyDer<'static>,
    other_spki: Vec<u8>,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "DANE test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = LEAF_NAMES.iter().map(|n| n.to_string()).collect();
    let leaf = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    Pki {
        ca: ca.der().clone(),
        leaf: leaf.der().clone(),
        leaf_key: PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        other_spki: rcgen::PublicKeyData::subject_public_key_info(&other),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Knot with the three zones, Unbound validating them, and the PKI they name.
struct Dns {
    // Dropped in this order: the resolver first.
    unbound: Daemon,
    knot: Daemon,
    pki: Pki,
}

impl Dns {
    fn start() -> Option<Self> {
        let pki = pki();
        let leaf_spki = rustls::server::ParsedCertificate::try_from(&pki.leaf)
            .unwrap()
            .subject_public_key_info();
        let good = hex(&Sha256::digest(leaf_spki.as_ref()));
        let other = hex(&Sha256::digest(&pki.other_spki));
        let ca = hex(&Sha256::digest(&pki.ca));
        let wrong_ds = hex(&Sha256::digest(b"no key of _tcp.mxbogus.dane.test"));
        let dane = format!(
            "@ NS ns
ns A 127.0.0.1
@ MX 10 mx
mx A 127.0.0.1
_25._tcp.mx TLSA 3 1 1 {good}
wrong MX 10 mxwrong
mxwrong A 127.0.0.1
_25._tcp.mxwrong TLSA 3 1 1 {other}
ta MX 10 mxta
mxta A 127.0.0.1
_25._tcp.mxta TLSA 2 0 1 {ca}
taname MX 10 mxtaname
mxtaname A 127.0.0.1
_25._tcp.mxtaname TLSA 2 0 1 {ca}
bogus MX 10 mxbogus
mxbogus A 127.0.0.1
_tcp.mxbogus NS ns.dane.test.
_tcp.mxbogus DS 4242 13 2 {wrong_ds}
alias MX 10 alias-mx
alias-mx CNAME mx
unusable MX 10 mxunusable
mxunusable A 127.0.0.1
_25._tcp.mxunusable TLSA 1 1 1 {good}
nodane MX 10 mxnodane
mxnodane A 127.0.0.1"
        );
        // A zone of its own under dane.test, signed, but the DS its parent publishes
        // matches none of its keys (a botched key rollover): everything in it is
        // bogus. Its TLSA record would match.
        let bogus = format!("@ NS ns.dane.test.\n_25 TLSA 3 1 1 {good}");
        let plain = format!(
            "@ NS ns\nns A 127.0.0.1\n@ MX 10 mx\nmx A 127.0.0.1\n_25._tcp.mx TLSA 3 1 1 {other}"
        );
        let knot = knot(&[
            KnotZone {
                name: "dane.test",
                records: &dane,
                signed: true,
            },
            KnotZone {
                name: "_tcp.mxbogus.dane.test",
                records: &bogus,
                signed: true,
            },
            KnotZone {
                name: "plain.test",
                records: &plain,
                signed: false,
            },
        ])?;
        let anchors = knot_ds(&knot, "dane.test");
        assert!(!anchors.is_empty(), "no DS for dane.test");
        let server = knot.address;
        let unbound = unbound(
            &[
                ("dane.test", server),
                ("_tcp.mxbogus.dane.test", server),
                ("plain.test", server),
            ],
            &anchors,
        )?;
        Some(Self { unbound, knot, pki })
    }

    fn dane(&self) -> DaneResolver {
        DaneResolver::new(DaneConfig {
            resolver: self.unbound.address,
            timeout: Duration::from_secs(5),
        })
        .unwrap()
    }

    fn mx(&self) -> MxResolver {
        MxResolver::new(MxConfig {
            nameservers: vec![self.unbound.address],
            ..MxConfig::default()
        })
        .unwrap()
    }
}

/// What the receiving server got: the message, and whether it came under TLS.
type Inbox = Arc<Mutex<Vec<(Vec<u8>, bool)>>>;

/// smtp-server on a free loopback port, relaying for the test domains, with STARTTLS
/// on the leaf and CA chain (`tls`) or without STARTTLS.
async fn receiver(pki: &Pki, tls: bool) -> (SocketAddr, Inbox) {
    let inbox = Inbox::default();
    let kept = Arc::clone(&inbox);
    let sink = tower::service_fn(move |req: DataRequest| {
        let kept = Arc::clone(&kept);
        async move {
            let under_tls = req.session.tls.is_some();
            kept.lock().unwrap().push((req.message(), under_tls));
            Ok::<_, BoxError>(Decision::accept())
        }
    });
    let domains = DomainSet::new([
        "dane.test",
        "wrong.dane.test",
        "ta.dane.test",
        "taname.dane.test",
        "bogus.dane.test",
        "alias.dane.test",
        "unusable.dane.test",
        "nodane.dane.test",
        "plain.test",
    ]);
    let stages = Stages::new(sink).relay_policy(filter(RelayPolicy::new(domains, vec![])));
    let tls = tls.then(|| {
        smtp_server::tls::from_der(
            vec![pki.leaf.clone(), pki.ca.clone()],
            pki.leaf_key.clone_key(),
        )
        .unwrap()
    });
    let config = ServerConfig {
        hostname: "receiver.test".into(),
        listeners: vec![ListenerConfig {
            address: "127.0.0.1:0".parse().unwrap(),
            mode: ListenerMode::Relay,
            proxy: None,
        }],
        tls,
        ..ServerConfig::default()
    };
    let server = Server::bind(config, stages).await.unwrap();
    let address = server.local_addrs()[0].1;
    tokio::spawn(server.run(std::future::pending()));
    (address, inbox)
}

/// How a delivery attempt ended.
#[derive(Debug)]
enum Outcome {
    /// The server's replies, whether TLS protected the session, and whether DANE
    /// applied.
    Sent {
        replies: Vec<String>,
        tls: bool,
        dane: bool,
    },
    /// Deferred before any mail was sent: the reply to record.
    Deferred(String),
}

/// What remote delivery does with DANE for `domain`: MX (through Unbound), the DANE
/// policy of the best host (`DaneResolver::policy`), then the session on `port`.
async fn deliver(dns: &Dns, domain: &str, port: u16) -> Outcome {
    let hosts = dns.mx().route(domain).await.unwrap();
    let host = &hosts[0];
    let mut config =
        OutboundConfig::new("client.test", TlsConfigs::with_roots(Vec::new()).unwrap());
    config.port = port;
    config.tls = TlsPolicy::Opportunistic;
    match dns.dane().policy(domain, &host.name, 25).await {
        Ok(Some(records)) => {
            let records = records
                .into_iter()
                .map(|r| Tlsa::new(r.usage, r.selector, r.matching, r.data))
                .collect();
            config.dane = Some(DaneTls::new(records, &[&host.name, domain]).unwrap());
        }
        Ok(None) => {}
        Err(e) => {
            let (code, status) = e.status();
            return Outcome::Deferred(format!("{code} {status} {e}"));
        }
    }
    let session = Session::open(&host.name, &host.addresses, &config).await;
    let mut session = match session {
        Ok(s) => s,
        Err(e) => return Outcome::Deferred(client_reply(&e)),
    };
    let message = OutboundMessage {
        from: ReversePath::parse("<sender@client.test>").unwrap(),
        params: MailParameters::default(),
        recipients: vec![(
            ForwardPath::parse(&format!("<rcpt@{domain}>")).unwrap(),
            RcptParameters::default(),
        )],
        body: format!("Subject: to {domain}\r\n\r\nHello\r\n")
            .into_bytes()
            .into(),
    };
    let replies = session.deliver(&message).await.unwrap();
    let tls = session.is_tls();
    session.quit().await;
    Outcome::Sent {
        replies: replies.iter().map(|r| r.to_string()).collect(),
        tls,
        dane: config.dane.is_some(),
    }
}

fn client_reply(e: &ClientError) -> String {
    assert!(e.is_transient(), "{e}");
    e.reply().to_string()
}

/// Asserts a delivery under TLS (with or without DANE as `dane` says) that the
/// server stored.
fn assert_delivered(outcome: Outcome, inbox: &Inbox, domain: &str, dane: bool) {
    match outcome {
        Outcome::Sent {
            replies,
            tls,
            dane: applied,
        } => {
            assert_eq!(replies.len(), 1);
            assert!(replies[0].starts_with("250"), "{replies:?}");
            assert!(tls, "not under TLS");
            assert_eq!(applied, dane, "DANE applied?");
        }
        Outcome::Deferred(reply) => panic!("{domain}: deferred: {reply}"),
    }
    let inbox = inbox.lock().unwrap();
    assert_eq!(inbox.len(), 1);
    let (message, under_tls) = &inbox[0];
    assert!(*under_tls, "the server did not see TLS");
    let text = String::from_utf8_lossy(message);
    assert!(text.contains(&format!("Subject: to {domain}")), "{text}");
}

/// Asserts a deferral (`451 4.7.5`, saying `why`) with nothing received.
fn assert_deferred(outcome: Outcome, inbox: &Inbox, why: &str) {
    match outcome {
        Outcome::Deferred(reply) => {
            assert!(reply.starts_with("451 4.7.5"), "{reply}");
            assert!(reply.contains(why), "{reply} (expected {why:?})");
        }
        sent => panic!("not deferred: {sent:?}"),
    }
    assert!(inbox.lock().unwrap().is_empty(), "the server received mail");
}

macro_rules! dns_or_skip {
    () => {
        match Dns::start() {
            Some(dns) => dns,
            None => return,
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_dane_ee_record_delivers() {
    let dns = dns_or_skip!();
    let (server, inbox) = receiver(&dns.pki, true).await;
    let outcome = deliver(&dns, "dane.test", server.port()).await;
    assert_delivered(outcome, &inbox, "dane.test", true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatching_record_defers_before_mail() {
    let dns = dns_or_skip!();
    let (server, inbox) = receiver(&dns.pki, true).await;
    let outcome = deliver(&dns, "wrong.dane.test", server.port()).await;
    assert_deferred(outcome, &inbox, "no DANE-EE TLSA record matches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dane_ta_record_delivers_when_the_leaf_names_the_mx() {
    let dns = dns_or_skip!();
    let (server, inbox) = receiver(&dns.pki, true).await;
    let outcome = deliver(&dns, "ta.dane.test", server.port()).await;
    assert_delivered(outcome, &inbox, "ta.dane.test", true);

    // The same CA, but the leaf names neither mxtaname.dane.test nor the domain.
    let (server, inbox) = receiver(&dns.pki, true).await;
    let outcome = deliver(&dns, "taname.dane.test", server.port()).await;
    assert_deferred(outcome, &inbox, "does not verify");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bogus_signature_defers() {
    let dns = dns_or_skip!();
    let (server, inbox) = receiver(&dns.pki, true).await;
    let outcome = deliver(&dns, "bogus.dane.test", server.port()).await;
    assert_deferred(
        outcome,
        &inbox,
        "TLSA lookup for _25._tcp.mxbogus.dane.test failed securely",
    );
    // Unbound says why: the chain of trust to the zone is broken.
    let log = unbound_log(&dns.unbound);
    assert!(
        log.contains("validation failure <_25._tcp.mxbogus.dane.test. TLSA IN>"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_zone_is_opportunistic() {
    let dns = dns_or_skip!();
    let dane = dns.dane();
    assert_eq!(
        dane.mx_security("plain.test").await.unwrap(),
        Security::Insecure
    );
    // Its TLSA record names another key, but unsigned it means nothing.
    assert_eq!(dane.tlsa("mx.plain.test", 25, true).await.unwrap(), None);
    let (server, inbox) = receiver(&dns.pki, true).await;
    let outcome = deliver(&dns, "plain.test", server.port()).await;
    assert_delivered(outcome, &inbox, "plain.test", false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_say_what_is_secure() {
    let dns = dns_or_skip!();
    let dane = dns.dane();
    assert_eq!(
        dane.mx_security("dane.test").await.unwrap(),
        Security::Secure
    );
    // A signed denial is secure too (no MX: implicit MX).
    assert_eq!(
        dane.mx_security("mx.dane.test").await.unwrap(),
        Security::Secure
    );
    let records = dane.tlsa("mx.dane.test", 25, true).await.unwrap().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].usage, records[0].selector, records[0].matching),
        (3, 1, 1)
    );
    // An insecure MX RRset: no TLSA lookup at all.
    assert_eq!(dane.tlsa("mx.dane.test", 25, false).await.unwrap(), None);
    // No TLSA records (signed denial): no DANE.
    assert_eq!(
        dane.tlsa("mxnodane.dane.test", 25, true).await.unwrap(),
        None
    );
    // Another port, another owner name: none there.
    assert_eq!(dane.tlsa("mx.dane.test", 587, true).await.unwrap(), None);
    // A secure CNAME is followed: the records of its target.
    let aliased = dane.tlsa("alias-mx.dane.test", 25, true).await.unwrap();
    assert_eq!(aliased, Some(records));
    // The policy of a host checks that the validated MX RRset lists it.
    let policy = dane.policy("dane.test", "mx.dane.test", 25).await.unwrap();
    assert_eq!(policy.map(|r| r.len()), Some(1));
    let err = dane
        .policy("dane.test", "mxwrong.dane.test", 25)
        .await
        .unwrap_err();
    assert_eq!(err.status(), (451, "4.7.5"));
    assert!(
        err.to_string().contains("not among the validated MX hosts"),
        "{err}"
    );
    // No MX (a signed denial): the domain itself, and nothing else, is its host.
    let implicit = dane
        .policy("mx.dane.test", "mx.dane.test", 25)
        .await
        .unwrap();
    assert_eq!(implicit.map(|r| r.len()), Some(1));
    assert!(
        dane.policy("mx.dane.test", "mxta.dane.test", 25)
            .await
            .is_err()
    );
    // Unsigned: no DANE, whatever the host.
    assert_eq!(
        dane.policy("plain.test", "mx.plain.test", 25)
            .await
            .unwrap(),
        None
    );
    // The self-test of `mta check-config`: Unbound validates dane.test; plain.test has
    // no anchor; knot itself (authoritative, no validation) never sets AD.
    assert!(dane.validates("dane.test").await.unwrap());
    assert!(!dane.validates("plain.test").await.unwrap());
    let knot = DaneResolver::new(DaneConfig {
        resolver: dns.knot.address,
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    assert!(!knot.validates("dane.test").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cname_mx_host_uses_the_targets_records() {
    let dns = dns_or_skip!();
    let (server, inbox) = receiver(&dns.pki, true).await;
    let outcome = deliver(&dns, "alias.dane.test", server.port()).await;
    assert_delivered(outcome, &inbox, "alias.dane.test", true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_records_still_require_tls() {
    let dns = dns_or_skip!();
    // Only a PKIX-EE record: not usable for SMTP, so any certificate will do, but TLS
    // is still mandatory.
    let (server, inbox) = receiver(&dns.pki, true).await;
    let outcome = deliver(&dns, "unusable.dane.test", server.port()).await;
    assert_delivered(outcome, &inbox, "unusable.dane.test", true);
    let (plaintext, inbox) = receiver(&dns.pki, false).await;
    let outcome = deliver(&dns, "unusable.dane.test", plaintext.port()).await;
    assert_deferred(outcome, &inbox, "does not offer STARTTLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_starttls_is_deferred() {
    let dns = dns_or_skip!();
    let (plaintext, inbox) = receiver(&dns.pki, false).await;
    let outcome = deliver(&dns, "dane.test", plaintext.port()).await;
    assert_deferred(outcome, &inbox, "does not offer STARTTLS");
    // Without DANE, the same server gets the mail in plaintext (opportunistic).
    let outcome = deliver(&dns, "nodane.dane.test", plaintext.port()).await;
    match outcome {
        Outcome::Sent { replies, tls, dane } => {
            assert!(replies[0].starts_with("250"), "{replies:?}");
            assert!(!tls && !dane);
        }
        deferred => panic!("{deferred:?}"),
    }
}
