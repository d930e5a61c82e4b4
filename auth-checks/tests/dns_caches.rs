//! The caches of parsed DNS answers that spare repeated senders their lookups (SPF's
//! TXT, A and MX answers; DMARC's tree walk, negative answers included; DKIM keys;
//! reverse DNS), black-box against a DNS server on loopback whose records the test
//! changes and which it can make fail (SERVFAIL for everything):
//!
//! - within an answer's TTL, the verdict comes from the cache: the same verdict while
//!   the server fails (the resolver's own cache is emptied first, so only ours can
//!   answer);
//! - after the TTL (1 s here), a changed record is seen.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auth_checks::{
    DkimResult, DkimSigner, DmarcPolicy, DmarcResult, KeyKind, MessageChecks, ReverseDns,
    SpfResult, Verifier, generate_key,
};
use dns_mx::{MxConfig, MxResolver};
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, PTR, SOA, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

/// The records of a [`MutableDns`], by lower-case name without the final dot and type.
type Records = Mutex<HashMap<(String, RecordType), Vec<RData>>>;

/// A DNS server on 127.0.0.1 (UDP) authoritative for everything, whose records can be
/// changed, and which can be made to answer SERVFAIL to every query. Names it has no
/// record for are NXDOMAIN, with an SOA whose TTL and minimum are the server's TTL (so
/// that negative answers have that negative TTL).
struct MutableDns {
    addr: SocketAddr,
    records: Arc<Records>,
    failing: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MutableDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MutableDns {
    /// A server answering with `ttl` (seconds) for every record and negative answer.
    async fn start(ttl: u32) -> Self {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let records: Arc<Records> = Arc::default();
        let failing = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let records = Arc::clone(&records);
            let failing = Arc::clone(&failing);
            let queries = Arc::clone(&queries);
            async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                        return;
                    };
                    let Ok(request) = Message::from_vec(&buf[..n]) else {
                        continue;
                    };
                    queries.fetch_add(1, Ordering::SeqCst);
                    let reply = answer(&request, &records, failing.load(Ordering::SeqCst), ttl);
                    let _ = socket.send_to(&reply.to_vec().unwrap(), peer).await;
                }
            }
        });
        Self {
            addr,
            records,
            failing,
            queries,
            task,
        }
    }

    /// Publishes `data` (replacing the records of its type) at `name`.
    fn set(&self, name: &str, data: Vec<RData>) {
        let rtype = data[0].record_type();
        self.records
            .lock()
            .unwrap()
            .insert((name.to_ascii_lowercase(), rtype), data);
    }

    fn set_txt(&self, name: &str, text: &str) {
        self.set(name, vec![RData::TXT(TXT::new(vec![text.to_owned()]))]);
    }

    /// From now on, SERVFAIL for every query (or normal answers again).
    fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Queries received so far.
    fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// The reply to `request`.
fn answer(request: &Message, records: &Records, failing: bool, ttl: u32) -> Message {
    let mut reply = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = request.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    let Some(query) = request.queries.first() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return reply;
    };
    reply.add_query(query.clone());
    if failing {
        reply.metadata.response_code = ResponseCode::ServFail;
        return reply;
    }
    let name = query.name().to_ascii();
    let key = name.trim_end_matches('.').to_ascii_lowercase();
    let records = records.lock().unwrap();
    if let Some(found) = records.get(&(key.clone(), query.query_type())) {
        for data in found {
            reply.add_answer(Record::from_rdata(query.name().clone(), ttl, data.clone()));
        }
        return reply;
    }
    // No record of the type: NODATA when the name has others, else NXDOMAIN.
    if !records.keys().any(|(n, _)| *n == key) {
        reply.metadata.response_code = ResponseCode::NXDomain;
    }
    let soa = SOA::new(
        Name::from_ascii("ns.test.").unwrap(),
        Name::from_ascii("root.test.").unwrap(),
        1,
        3600,
        600,
        86400,
        ttl,
    );
    reply.add_authority(Record::from_rdata(Name::root(), ttl, RData::SOA(soa)));
    reply
}

/// A verifier asking only `dns`, and its resolver (to empty the resolver's own cache).
fn verifier(dns: &MutableDns) -> (Verifier, TokioResolver) {
    let resolver = MxResolver::new(MxConfig {
        nameservers: vec![dns.addr],
        timeout: Duration::from_secs(2),
        ..MxConfig::default()
    })
    .unwrap();
    let resolver = resolver.resolver().clone();
    (Verifier::new(resolver.clone(), "mx.example.net"), resolver)
}

const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

/// SPF of `a@example.org` from [`CLIENT`] (no HELO check: `localhost` is no domain).
async fn spf(verifier: &Verifier) -> SpfResult {
    verifier
        .spf(CLIENT, "localhost", "a@example.org")
        .await
        .mail_from
        .result
}

/// `example.org` authorizes `host.example.org`'s address, and an MX host's.
fn spf_records(dns: &MutableDns, host: [u8; 4]) {
    dns.set_txt("example.org", "v=spf1 a:host.example.org mx -all");
    dns.set("host.example.org", vec![RData::A(A(host.into()))]);
}

#[tokio::test]
async fn spf_answers_are_served_from_the_cache_within_their_ttl() {
    let dns = MutableDns::start(300).await;
    spf_records(&dns, [192, 0, 2, 1]);
    let (verifier, resolver) = verifier(&dns);
    assert_eq!(spf(&verifier).await, SpfResult::Pass);
    let asked = dns.queries();
    resolver.clear_cache();
    dns.fail(true);
    assert_eq!(spf(&verifier).await, SpfResult::Pass);
    // Not a query: the TXT and A answers came from the cache.
    assert_eq!(dns.queries(), asked);
    // A domain it has not seen fails as it should.
    let other = verifier.spf(CLIENT, "localhost", "a@example.com").await;
    assert_eq!(other.mail_from.result, SpfResult::TempError);
}

#[tokio::test]
async fn a_changed_spf_record_is_seen_after_its_ttl() {
    let dns = MutableDns::start(1).await;
    spf_records(&dns, [192, 0, 2, 1]);
    let (verifier, _resolver) = verifier(&dns);
    assert_eq!(spf(&verifier).await, SpfResult::Pass);
    // The host moves away: after the TTL the client is no longer authorized.
    dns.set("host.example.org", vec![RData::A(A::new(192, 0, 2, 99))]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(spf(&verifier).await, SpfResult::Fail);
    // And the record itself changes.
    dns.set_txt("example.org", "v=spf1 ip4:192.0.2.1 -all");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(spf(&verifier).await, SpfResult::Pass);
}

/// A message from `a@example.org`, DKIM-signed with `signer` when given.
fn message(signer: Option<&DkimSigner>) -> Vec<u8> {
    let body = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nhello\r\n";
    let mut out = signer
        .map(|s| s.sign(body).unwrap().into_bytes())
        .unwrap_or_default();
    out.extend_from_slice(body);
    out
}

const DMARC: MessageChecks = MessageChecks {
    dkim: true,
    arc: false,
    dmarc: true,
};

#[tokio::test]
async fn dmarc_walk_and_dkim_key_are_served_from_the_cache_within_their_ttl() {
    let dns = MutableDns::start(300).await;
    let key = generate_key(KeyKind::Ed25519).unwrap();
    dns.set_txt("s1._domainkey.example.org", &key.dns_txt);
    // The walk asks _dmarc.example.org (found) and _dmarc.org (NXDOMAIN, negative TTL 300).
    dns.set_txt("_dmarc.example.org", "v=DMARC1; p=reject");
    let signer = DkimSigner::from_pem("example.org", "s1", key.private_pem.as_bytes()).unwrap();
    let signed = message(Some(&signer));
    let unsigned = message(None);
    // Signed by a subdomain: aligned (relaxed) after a walk from _dmarc.mail.example.org
    // (NXDOMAIN) up.
    dns.set_txt("s1._domainkey.mail.example.org", &key.dns_txt);
    let sub_signer =
        DkimSigner::from_pem("mail.example.org", "s1", key.private_pem.as_bytes()).unwrap();
    let sub_signed = message(Some(&sub_signer));
    let (verifier, resolver) = verifier(&dns);
    let check = |raw: Vec<u8>| {
        let verifier = verifier.clone();
        async move { verifier.check_message(&raw, None, DMARC).await }
    };
    let first = check(signed.clone()).await;
    assert_eq!(first.dkim.as_ref().unwrap()[0].result, DkimResult::Pass);
    let dmarc = first.dmarc.unwrap();
    assert_eq!(
        (dmarc.result, dmarc.policy),
        (DmarcResult::Pass, DmarcPolicy::Reject)
    );
    let failed = check(unsigned.clone()).await.dmarc.unwrap();
    assert_eq!(
        (failed.result, failed.policy),
        (DmarcResult::Fail, DmarcPolicy::Reject)
    );
    let before = dns.queries();
    let sub = check(sub_signed.clone()).await;
    // Exactly what the check needs and nothing more: the key, and _dmarc.mail.example.org
    // (the rest of the walk was cached).
    assert_eq!(dns.queries(), before + 2);
    assert_eq!(sub.dkim.as_ref().unwrap()[0].result, DkimResult::Pass);
    let sub = sub.dmarc.unwrap();
    assert_eq!((sub.result, sub.dkim_aligned), (DmarcResult::Pass, true));
    let asked = dns.queries();
    resolver.clear_cache();
    dns.fail(true);
    assert_eq!(check(sub_signed).await.dmarc.unwrap(), sub);
    let again = check(signed).await;
    assert_eq!(again.dkim.unwrap()[0].result, DkimResult::Pass);
    assert_eq!(again.dmarc.unwrap(), dmarc);
    assert_eq!(check(unsigned).await.dmarc.unwrap(), failed);
    assert_eq!(dns.queries(), asked);
}

#[tokio::test]
async fn a_dmarc_record_published_is_seen_after_the_negative_ttl() {
    let dns = MutableDns::start(1).await;
    let (verifier, _resolver) = verifier(&dns);
    let unsigned = message(None);
    let none = verifier.check_message(&unsigned, None, DMARC).await;
    assert_eq!(none.dmarc.unwrap().result, DmarcResult::None);
    // Published: the walk's negative answer for `_dmarc.example.org` must have expired
    // for it to be found.
    dns.set_txt("_dmarc.example.org", "v=DMARC1; p=quarantine");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let found = verifier.check_message(&unsigned, None, DMARC).await;
    let dmarc = found.dmarc.unwrap();
    assert_eq!(
        (dmarc.result, dmarc.policy),
        (DmarcResult::Fail, DmarcPolicy::Quarantine)
    );
    // And changed.
    dns.set_txt("_dmarc.example.org", "v=DMARC1; p=reject");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let changed = verifier.check_message(&unsigned, None, DMARC).await;
    assert_eq!(changed.dmarc.unwrap().policy, DmarcPolicy::Reject);
}

fn rdns_records(dns: &MutableDns, host: [u8; 4]) {
    dns.set(
        "1.2.0.192.in-addr.arpa",
        vec![RData::PTR(PTR(
            Name::from_ascii("mail.example.org.").unwrap()
        ))],
    );
    dns.set("mail.example.org", vec![RData::A(A(host.into()))]);
}

fn deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(10)
}

#[tokio::test]
async fn reverse_dns_is_served_from_the_cache_within_its_ttl() {
    let dns = MutableDns::start(300).await;
    rdns_records(&dns, [192, 0, 2, 1]);
    let (verifier, resolver) = verifier(&dns);
    let rdns = ReverseDns::new(&verifier);
    let first = rdns.lookup(CLIENT, deadline()).await;
    assert_eq!(first.confirmed.as_deref(), Some("mail.example.org"));
    let asked = dns.queries();
    resolver.clear_cache();
    dns.fail(true);
    let again = rdns.lookup(CLIENT, deadline()).await;
    assert_eq!(again, first);
    assert_eq!(dns.queries(), asked);
    // An address not seen before: a temporary failure, as it should be.
    let other = rdns.lookup("192.0.2.2".parse().unwrap(), deadline()).await;
    assert!(other.temporary, "{other:?}");
}

#[tokio::test]
async fn a_changed_reverse_dns_answer_is_seen_after_its_ttl() {
    let dns = MutableDns::start(1).await;
    rdns_records(&dns, [192, 0, 2, 1]);
    let (verifier, _resolver) = verifier(&dns);
    let rdns = ReverseDns::new(&verifier);
    let first = rdns.lookup(CLIENT, deadline()).await;
    assert_eq!(first.confirmed.as_deref(), Some("mail.example.org"));
    dns.set("mail.example.org", vec![RData::A(A::new(192, 0, 2, 99))]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let moved = rdns.lookup(CLIENT, deadline()).await;
    assert_eq!(moved.names, ["mail.example.org"]);
    assert_eq!(moved.confirmed, None);
    assert!(!moved.temporary);
}
