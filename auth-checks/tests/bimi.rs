//! BIMI on receipt, black-box: an smtp-server on 127.0.0.1:0 with the checks' layers
//! (DMARC `enforce`, BIMI on), a DNS server on loopback serving DKIM keys, DMARC and
//! BIMI records (and a name that never answers), and clients that send DKIM-signed
//! mail over SMTP. What is asserted is what the server stores: the `BIMI-Location`
//! header fields, the `bimi=` result in `Authentication-Results`, and the reply.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auth_checks::{AuthChecks, DkimSigner, GeneratedKey, KeyKind, Mode, Policy, generate_key};
use dns_mx::testing::TestDns;
use hickory_resolver::proto::rr::rdata::TXT;
use hickory_resolver::proto::rr::{Name, RData, Record};
use smtp_client::testing::{RawClient, code_of};
use smtp_server::filters::{DomainSet, RelayPolicy};
use smtp_server::{
    BoxError, DataRequest, Decision, ListenerConfig, ListenerMode, Server, ServerConfig, Stages,
    filter,
};

/// The indicator and evidence locations example.org publishes.
const LOGO: &str = "https://example.org/logo.svg";
const VMC: &str = "https://example.org/vmc.pem";

/// A TXT record of one string.
fn txt(name: &str, value: &str) -> Record {
    Record::from_rdata(
        Name::from_ascii(format!("{name}.")).unwrap(),
        300,
        RData::TXT(TXT::new(vec![value.to_owned()])),
    )
}

/// The test's world: one DKIM key (selector `s1`) for every signing domain, and
/// - example.org: `p=reject`; `default` and `brand` BIMI records, `off` declines;
/// - news.example.org: no records of its own (the organizational domain's apply);
/// - example.com: `p=none` and a BIMI record (which must not be used);
/// - example.net: `p=reject`, and its BIMI name never answers.
struct World {
    key: GeneratedKey,
    dns: TestDns,
}

impl World {
    async fn start() -> Self {
        let key = generate_key(KeyKind::Ed25519).unwrap();
        let mut records = Vec::new();
        for domain in ["example.org", "example.com", "example.net"] {
            records.push(txt(&format!("s1._domainkey.{domain}"), &key.dns_txt));
        }
        records.extend([
            txt("_dmarc.example.org", "v=DMARC1; p=reject"),
            txt(
                "default._bimi.example.org",
                &format!("v=BIMI1; l={LOGO}; a={VMC}"),
            ),
            txt(
                "brand._bimi.example.org",
                "v=BIMI1; l=https://cdn.example.org/brand.svg;",
            ),
            txt("off._bimi.example.org", "v=BIMI1; l=; a=;"),
            // A record that is not BIMI's, beside the BIMI one: discarded (§7.2 step 4).
            txt("default._bimi.example.org", "some other TXT"),
            txt("_dmarc.example.com", "v=DMARC1; p=none"),
            txt(
                "default._bimi.example.com",
                "v=BIMI1; l=https://example.com/logo.svg",
            ),
            txt("_dmarc.example.net", "v=DMARC1; p=reject"),
        ]);
        let mut builder = TestDns::builder();
        for record in records {
            builder = builder.record(record);
        }
        let dns = builder
            .timeout(Name::from_ascii("default._bimi.example.net.").unwrap())
            .start()
            .await;
        Self { key, dns }
    }

    /// `message` with a DKIM signature of `domain` over the default fields, and
    /// `BIMI-Selector` too when `sign_selector`.
    fn signed(&self, domain: &str, message: &str, sign_selector: bool) -> String {
        let mut signer =
            DkimSigner::from_pem(domain, "s1", self.key.private_pem.as_bytes()).unwrap();
        if sign_selector {
            signer = signer.with_headers(&["From", "To", "Subject", "BIMI-Selector"]);
        }
        let message = message.replace('\n', "\r\n");
        let signature = signer.sign(message.as_bytes()).unwrap();
        format!("{signature}{message}")
    }
}

/// A relay server for `example.test` with the checks (DMARC `enforce`, BIMI on,
/// a 2 s DNS budget) asking `dns`, keeping the messages it accepts.
struct TestServer {
    addr: SocketAddr,
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(dns: &TestDns) -> TestServer {
    let policy = Policy {
        dmarc: Mode::Enforce,
        time_budget: Duration::from_secs(2),
        ..Policy::default()
    };
    assert!(policy.bimi, "BIMI is on by default");
    let checks = AuthChecks::new(support::verifier(dns), policy);
    let messages: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let kept = Arc::clone(&messages);
    let sink = tower::service_fn(move |req: DataRequest| {
        let kept = Arc::clone(&kept);
        async move {
            kept.lock().unwrap().push(req.message());
            Ok::<_, BoxError>(Decision::accept())
        }
    });
    let stages = Stages::new(sink)
        .data_layer(checks.data_layer())
        .mail_layer(checks.mail_layer())
        .relay_policy(filter(RelayPolicy::new(
            DomainSet::new(["example.test"]),
            vec![],
        )));
    let config = ServerConfig {
        hostname: "mx.example.net".into(),
        listeners: vec![ListenerConfig {
            address: "127.0.0.1:0".parse().unwrap(),
            mode: ListenerMode::Relay,
            proxy: None,
        }],
        ..ServerConfig::default()
    };
    let server = Server::bind(config, stages).await.unwrap();
    let addr = server.local_addrs()[0].1;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        messages,
        _stop: stop,
    }
}

impl TestServer {
    /// Sends `message` from `from` to you@example.test; the final reply, and what was
    /// stored.
    async fn send(&self, from: &str, message: &str) -> (String, String) {
        let mut c = RawClient::connect(self.addr).await;
        for (command, expected) in [
            ("EHLO client.example.test".to_owned(), "250"),
            (format!("MAIL FROM:<{from}>"), "250 2.1.0"),
            ("RCPT TO:<you@example.test>".to_owned(), "250 2.1.5"),
            ("DATA".to_owned(), "354"),
        ] {
            let reply = c.cmd(&command).await;
            assert!(
                code_of(&reply).starts_with(expected),
                "{command}: {reply:?}"
            );
        }
        c.send(message.as_bytes()).await;
        c.send(b".\r\n").await;
        let reply = code_of(&c.reply().await);
        c.cmd("QUIT").await;
        let stored = self
            .messages
            .lock()
            .unwrap()
            .pop()
            .map(|m| String::from_utf8(m).unwrap())
            .unwrap_or_default();
        (reply, stored)
    }
}

/// The unfolded values of the `name` fields in the header section of `message`.
fn fields(message: &str, name: &str) -> Vec<String> {
    let header = message.split("\r\n\r\n").next().unwrap();
    let unfolded = header.replace("\r\n\t", " ").replace("\r\n ", " ");
    unfolded
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

/// The `bimi=` clause of the message's (one) `Authentication-Results` field.
fn bimi_result(message: &str) -> String {
    let results = fields(message, "Authentication-Results");
    assert_eq!(results.len(), 1, "{message}");
    results[0]
        .split(';')
        .map(str::trim)
        .find(|clause| clause.starts_with("bimi="))
        .unwrap_or_else(|| panic!("no bimi= in {}", results[0]))
        .to_owned()
}

const FORGED: &str =
    "BIMI-Location: v=BIMI1;\n l=https://evil.example/fake.svg\nBIMI-Indicator: PHN2Zz48L3N2Zz4=\n";

fn message(from: &str, extra: &str) -> String {
    format!("From: Brand <{from}>\nTo: you@example.test\nSubject: news\n{extra}\nHello.\n")
}

/// A DKIM-signed message from a `p=reject` domain with a BIMI record gets one
/// `BIMI-Location` with the record's URIs, ours: the forged one it came with is gone.
#[tokio::test(flavor = "multi_thread")]
async fn an_enforcing_dmarc_pass_gets_the_record_s_location() {
    let world = World::start().await;
    let server = serve(&world.dns).await;
    let sent = world.signed("example.org", &message("news@example.org", FORGED), false);
    let (reply, stored) = server.send("news@example.org", &sent).await;
    assert_eq!(reply, "250 2.0.0", "{stored}");
    assert_eq!(
        fields(&stored, "BIMI-Location"),
        [format!("v=BIMI1; l={LOGO}; a={VMC}")],
        "{stored}"
    );
    assert!(fields(&stored, "BIMI-Indicator").is_empty(), "{stored}");
    assert_eq!(
        bimi_result(&stored),
        "bimi=pass header.d=example.org header.selector=default"
    );
    assert!(
        fields(&stored, "Authentication-Results")[0].contains("dmarc=pass"),
        "{stored}"
    );
    // The rest of the message is as it came.
    assert!(
        stored.ends_with("Subject: news\r\n\r\nHello.\r\n"),
        "{stored}"
    );
}

/// `p=none` is no BIMI: no header (the forged one removed), `bimi=skipped`.
#[tokio::test(flavor = "multi_thread")]
async fn p_none_gets_no_location_and_loses_the_forged_one() {
    let world = World::start().await;
    let server = serve(&world.dns).await;
    let sent = world.signed("example.com", &message("news@example.com", FORGED), false);
    let (reply, stored) = server.send("news@example.com", &sent).await;
    assert_eq!(reply, "250 2.0.0", "{stored}");
    assert!(fields(&stored, "BIMI-Location").is_empty(), "{stored}");
    assert!(fields(&stored, "BIMI-Indicator").is_empty(), "{stored}");
    assert_eq!(
        bimi_result(&stored),
        "bimi=skipped (DMARC policy not enforcing)"
    );
}

/// An unsigned message fails DMARC at `p=reject` (refused: `enforce`); a message
/// signed by another domain passes DKIM but not DMARC: no BIMI either way, and a
/// forged location never survives.
#[tokio::test(flavor = "multi_thread")]
async fn no_dmarc_pass_no_location() {
    let world = World::start().await;
    let server = serve(&world.dns).await;
    let unsigned = message("news@example.org", FORGED).replace('\n', "\r\n");
    let (reply, _) = server.send("news@example.org", &unsigned).await;
    assert_eq!(reply, "550 5.7.1");
    // Signed by example.com, from an example.org address: DMARC fails (refused).
    let other = world.signed("example.com", &message("news@example.org", FORGED), false);
    let (reply, _) = server.send("news@example.org", &other).await;
    assert_eq!(reply, "550 5.7.1");
    // From a domain without DMARC: accepted, no location.
    let (reply, stored) = server
        .send(
            "a@nodmarc.example.test",
            &message("a@nodmarc.example.test", FORGED).replace('\n', "\r\n"),
        )
        .await;
    assert_eq!(reply, "250 2.0.0", "{stored}");
    assert!(fields(&stored, "BIMI-Location").is_empty(), "{stored}");
    assert_eq!(bimi_result(&stored), "bimi=skipped (no DMARC pass)");
}

/// A BIMI record that does not answer: accepted, no header, `bimi=temperror`.
#[tokio::test(flavor = "multi_thread")]
async fn a_dns_timeout_gives_no_location_and_accepts() {
    let world = World::start().await;
    let server = serve(&world.dns).await;
    let sent = world.signed("example.net", &message("news@example.net", FORGED), false);
    let (reply, stored) = server.send("news@example.net", &sent).await;
    assert_eq!(reply, "250 2.0.0", "{stored}");
    assert!(fields(&stored, "BIMI-Location").is_empty(), "{stored}");
    let bimi = bimi_result(&stored);
    assert!(bimi.starts_with("bimi=temperror ("), "{bimi}");
    assert!(
        fields(&stored, "Authentication-Results")[0].contains("dmarc=pass"),
        "{stored}"
    );
}

/// A subdomain without a record of its own falls back to the organizational domain's.
#[tokio::test(flavor = "multi_thread")]
async fn a_subdomain_uses_the_organizational_domain_s_record() {
    let world = World::start().await;
    let server = serve(&world.dns).await;
    let sent = world.signed("example.org", &message("a@news.example.org", ""), false);
    let (reply, stored) = server.send("a@news.example.org", &sent).await;
    assert_eq!(reply, "250 2.0.0", "{stored}");
    assert_eq!(
        fields(&stored, "BIMI-Location"),
        [format!("v=BIMI1; l={LOGO}; a={VMC}")],
        "{stored}"
    );
    assert_eq!(
        bimi_result(&stored),
        "bimi=pass header.d=example.org header.selector=default"
    );
}

/// `BIMI-Selector` counts only when the aligned DKIM signature covers it; a selector
/// whose record declines gives no location and `bimi=declined`.
#[tokio::test(flavor = "multi_thread")]
async fn a_signed_selector_is_used_an_unsigned_one_ignored() {
    let world = World::start().await;
    let server = serve(&world.dns).await;
    let brand = message("news@example.org", "BIMI-Selector: v=BIMI1; s=brand;\n");
    let (reply, stored) = server
        .send(
            "news@example.org",
            &world.signed("example.org", &brand, true),
        )
        .await;
    assert_eq!(reply, "250 2.0.0", "{stored}");
    assert_eq!(
        fields(&stored, "BIMI-Location"),
        ["v=BIMI1; l=https://cdn.example.org/brand.svg"],
        "{stored}"
    );
    assert_eq!(
        bimi_result(&stored),
        "bimi=pass header.d=example.org header.selector=brand"
    );
    // The same header, not signed: the default record.
    let (_, stored) = server
        .send(
            "news@example.org",
            &world.signed("example.org", &brand, false),
        )
        .await;
    assert_eq!(
        bimi_result(&stored),
        "bimi=pass header.d=example.org header.selector=default"
    );
    // A selector that declines.
    let off = message("news@example.org", "BIMI-Selector: v=BIMI1; s=off\n");
    let (reply, stored) = server
        .send("news@example.org", &world.signed("example.org", &off, true))
        .await;
    assert_eq!(reply, "250 2.0.0", "{stored}");
    assert!(fields(&stored, "BIMI-Location").is_empty(), "{stored}");
    assert_eq!(
        bimi_result(&stored),
        "bimi=declined header.d=example.org header.selector=off"
    );
    // A selector with no record: none, without falling back to `default`.
    let missing = message("news@example.org", "BIMI-Selector: v=BIMI1; s=nothing\n");
    let (_, stored) = server
        .send(
            "news@example.org",
            &world.signed("example.org", &missing, true),
        )
        .await;
    assert!(fields(&stored, "BIMI-Location").is_empty(), "{stored}");
    assert_eq!(bimi_result(&stored), "bimi=none header.selector=nothing");
}
