//! TLS reporting (RFC 8460) through the real `mta` binary: a sender `mta` delivers
//! to sts.test, whose MTA-STS policy (`testing`, `mx: mx.sts.test`) is on an HTTPS
//! server the test starts, whose MX hosts are a second `mta` (certificate for
//! mx.sts.test from a test CA) listed as `mx` and as `backup`, which the policy does
//! not list, and whose TLS-RPT record asks for reports by mail to a mailbox of the
//! sender itself and by HTTPS POST to a server the test starts. DNS is a loopback
//! server (`dns_mx::testing::TestDns`).
//!
//! Every message makes one verified session to `mx` (a success) and one
//! `validation-failure` (`backup` is not in the policy). With a report period of two
//! seconds, the reports that come are read back as a user would: the message in the
//! Maildir taken apart by Python's `email`, `gzip` and `json` (an independent reader),
//! the JSON checked against the RFC 8460 §4.4 schema, and the counts summed over the
//! periods equal to what was sent; and the body of the POST gunzipped the same way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use dns_mx::testing::TestDns;

use support::outbound::{Ca, Running, mx_host, sender_config, sender_config_for};
use support::{python, serve_logging, smtp_send, write};

/// An HTTPS server on 127.0.0.1: answers each request with `respond(request head,
/// body)`, one connection at a time. Returns its port.
fn https_server(
    config: Arc<rustls::ServerConfig>,
    respond: impl Fn(&str, &[u8]) -> String + Send + 'static,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let connection = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
            let mut stream = rustls::StreamOwned::new(connection, tcp);
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            let head_end = loop {
                if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            while request.len() < head_end + length {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let body = &request[head_end..request.len().min(head_end + length)];
            let response = respond(&head, body);
            let _ = stream.write_all(response.as_bytes());
            stream.conn.send_close_notify();
            let _ = stream.flush();
        }
    });
    port
}

/// A request the report server received: its head and its body.
type Posted = (String, Vec<u8>);

/// The messages in `dir` (a Maildir's `new`), waiting up to `secs` for `until` to
/// hold of them.
fn files_until(dir: &Path, secs: u64, until: impl Fn(&[PathBuf]) -> bool) -> Vec<PathBuf> {
    let start = std::time::Instant::now();
    loop {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| d.filter_map(Result::ok).map(|f| f.path()).collect())
            .unwrap_or_default();
        files.sort();
        if until(&files) || start.elapsed().as_secs() > secs {
            return files;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Takes a report message apart with Python: the headers, the MIME structure, the
/// attachment gunzipped and its JSON checked against RFC 8460 §4.4; prints
/// `domain|submitter|filename|successes|failures|result-type:count,...` of it.
const READ_REPORT: &str = r#"
import email, gzip, json, re, sys
msg = email.message_from_binary_file(open(sys.argv[1], 'rb'))
assert msg.get_content_type() == 'multipart/report', msg.get_content_type()
assert msg.get_param('report-type') == 'tlsrpt', msg.get_param('report-type')
domain = msg['TLS-Report-Domain']
submitter = msg['TLS-Report-Submitter']
subject = msg['Subject']
assert re.fullmatch(r'Report Domain: %s Submitter: %s Report-ID: <[^>]+>' % (re.escape(domain), re.escape(submitter)), subject), subject
assert msg['From'] == 'tls-reports@sender.test', msg['From']
assert msg['TLS-Required'] == 'No', msg['TLS-Required']
parts = msg.get_payload()
assert parts[0].get_content_type() == 'text/plain', parts[0].get_content_type()
gz = [p for p in parts if p.get_content_type() == 'application/tlsrpt+gzip']
assert len(gz) == 1, [p.get_content_type() for p in parts]
filename = gz[0].get_filename()
assert re.fullmatch(r'%s!%s!\d+!\d+(!.+)?\.json\.gz' % (re.escape(submitter), re.escape(domain)), filename), filename
report = json.loads(gzip.decompress(gz[0].get_payload(decode=True)))

def need(obj, key, kind):
    assert key in obj, (key, obj)
    assert isinstance(obj[key], kind), (key, obj[key])
    return obj[key]

def datetime(text):
    assert re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ', text), text

need(report, 'organization-name', str)
assert report['organization-name'] == 'Sender Org', report
dr = need(report, 'date-range', dict)
datetime(need(dr, 'start-datetime', str))
datetime(need(dr, 'end-datetime', str))
assert dr['start-datetime'] <= dr['end-datetime'], dr
need(report, 'contact-info', str)
rid = need(report, 'report-id', str)
assert ('<%s>' % rid) in subject, (rid, subject)
successes = failures = 0
types = {}
for p in need(report, 'policies', list):
    policy = need(p, 'policy', dict)
    assert need(policy, 'policy-type', str) in ('sts', 'tlsa', 'no-policy-found'), policy
    assert all(isinstance(s, str) for s in need(policy, 'policy-string', list)), policy
    assert need(policy, 'policy-domain', str) == domain, policy
    if policy['policy-type'] == 'sts':
        assert 'mode: testing' in policy['policy-string'], policy
        assert policy['mx-host'] == ['mx.sts.test'], policy
    summary = need(p, 'summary', dict)
    s = need(summary, 'total-successful-session-count', int)
    f = need(summary, 'total-failure-session-count', int)
    successes += s
    failures += f
    detailed = 0
    for d in p.get('failure-details', []):
        t = need(d, 'result-type', str)
        n = need(d, 'failed-session-count', int)
        detailed += n
        need(d, 'receiving-mx-hostname', str)
        types[t + '@' + d['receiving-mx-hostname']] = types.get(t + '@' + d['receiving-mx-hostname'], 0) + n
    assert detailed <= f, (detailed, f)
print('%s|%s|%s|%d|%d|%s' % (domain, submitter, filename, successes, failures,
      ','.join('%s:%d' % kv for kv in sorted(types.items()))))
"#;

/// The JSON of a POSTed report (gzip), checked as above; prints successes|failures.
const READ_POSTED: &str = r#"
import gzip, json, sys
report = json.loads(gzip.decompress(open(sys.argv[1], 'rb').read()))
for key in ('organization-name', 'date-range', 'contact-info', 'report-id', 'policies'):
    assert key in report, key
s = sum(p['summary']['total-successful-session-count'] for p in report['policies'])
f = sum(p['summary']['total-failure-session-count'] for p in report['policies'])
assert all(p['policy']['policy-domain'] == 'sts.test' for p in report['policies'])
print('%d|%d' % (s, f))
"#;

/// Two messages to sts.test: one verified session to `mx` and one
/// `validation-failure` for `backup` each. The reports of the periods they fell in
/// reach `reports@sender.test` (a message through the queue) and the HTTPS server,
/// and together count two successes and two failures.
#[test]
fn daily_reports_reach_the_rua_mailbox_and_https() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let ca = Ca::new("tlsrpt test CA");
    write(dir.path(), "ca.pem", &ca.pem);
    let policy = "version: STSv1\r\nmode: testing\r\nmx: mx.sts.test\r\nmax_age: 86400\r\n";
    let policy_port = https_server(ca.server_config("mta-sts.sts.test"), move |head, _| {
        if head.starts_with("GET /.well-known/mta-sts.txt HTTP/1.1\r\n") {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{policy}",
                policy.len()
            )
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned()
        }
    });
    let posted: Arc<Mutex<Vec<Posted>>> = Arc::default();
    let sink = Arc::clone(&posted);
    let report_port = https_server(ca.server_config("reports.sts.test"), move |head, body| {
        sink.lock().unwrap().push((head.to_owned(), body.to_vec()));
        "HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
    });
    let (mx, mx_port) = mx_host(&dir.path().join("mx"), &ca, &["mx.sts.test"]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let zone = format!(
        "$ORIGIN sts.test.\n$TTL 300\n\
         @ IN SOA ns root 1 3600 600 86400 60\n\
         @ IN MX 10 mx\n\
         @ IN MX 20 backup\n\
         mx IN A 127.0.0.2\n\
         backup IN A 127.0.0.2\n\
         mta-sts IN A 127.0.0.1\n\
         reports IN A 127.0.0.1\n\
         _mta-sts IN TXT \"v=STSv1; id=1\"\n\
         _smtp._tls IN TXT \"v=TLSRPTv1; rua=mailto:reports@sender.test,https://reports.sts.test:{report_port}/tlsrpt\"\n"
    );
    let dns = runtime.block_on(TestDns::start(&[&zone]));
    let metrics = support::free_address();
    let config = sender_config_for(
        dir.path(),
        Some(&dns.addr()),
        &[
            "me@sender.test",
            "reports@sender.test",
            "tls-reports@sender.test",
        ],
        &format!(
            r#"port = {mx_port}
ca_file = "{d}/ca.pem"
mta_sts_port = {policy_port}
mta_sts_timeout = "10s"
max_messages_per_connection = 1
[tls_reports]
interval = "2s"
organization_name = "Sender Org"
from = "tls-reports@sender.test"
contact_info = "tls-reports@sender.test"
[metrics]
address = "{metrics}"
"#,
        ),
    );
    let log = std::fs::File::create(dir.path().join("sender.log")).unwrap();
    let (sender, addr) = serve_logging(&config, &[], "info", log.into());
    let sender = Running(Some(sender));
    for n in 0..2 {
        smtp_send(
            &addr,
            "me@sender.test",
            &["alice@sts.test"],
            &format!("From: me@sender.test\r\nSubject: m{n}\r\n\r\nbody {n}\r\n"),
        );
    }
    let delivered = files_until(&dir.path().join("mx/maildir/sts.test/alice/new"), 30, |f| {
        f.len() >= 2
    });
    assert_eq!(delivered.len(), 2);

    // The reports, until they count both messages.
    let reports_dir = dir.path().join("maildir/sender.test/reports/new");
    let read = |files: &[PathBuf]| -> Vec<String> {
        files
            .iter()
            .map(|f| {
                python(READ_REPORT, &[f.to_str().unwrap()])
                    .trim()
                    .to_owned()
            })
            .collect()
    };
    let total = |lines: &[String], field: usize| -> u64 {
        lines
            .iter()
            .map(|l| l.split('|').nth(field).unwrap().parse::<u64>().unwrap())
            .sum()
    };
    let files = files_until(&reports_dir, 40, |files| {
        let lines = read(files);
        total(&lines, 3) >= 2 && total(&lines, 4) >= 2
    });
    let lines = read(&files);
    let log_text = std::fs::read_to_string(dir.path().join("sender.log")).unwrap_or_default();
    assert!(!lines.is_empty(), "no report came; the log:\n{log_text}");
    assert_eq!(total(&lines, 3), 2, "successes: {lines:?}");
    assert_eq!(total(&lines, 4), 2, "failures: {lines:?}");
    let mut failures = 0;
    for line in &lines {
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(fields[0], "sts.test", "{line}");
        assert_eq!(fields[1], "sender.test", "{line}");
        for kind in fields[5].split(',').filter(|k| !k.is_empty()) {
            let (what, n) = kind.rsplit_once(':').unwrap();
            assert_eq!(what, "validation-failure@backup.sts.test", "{line}");
            failures += n.parse::<u64>().unwrap();
        }
    }
    assert_eq!(failures, 2, "{lines:?}");

    // The same reports were POSTed, as application/tlsrpt+gzip.
    let start = std::time::Instant::now();
    while posted.lock().unwrap().len() < lines.len() && start.elapsed().as_secs() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let posted = posted.lock().unwrap().clone();
    assert!(!posted.is_empty(), "nothing POSTed; the log:\n{log_text}");
    let (mut s, mut f) = (0, 0);
    for (i, (head, body)) in posted.iter().enumerate() {
        assert!(head.starts_with("POST /tlsrpt HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("\r\ncontent-type: application/tlsrpt+gzip\r\n"),
            "{head}"
        );
        let file = write(dir.path(), &format!("posted{i}.gz"), "");
        std::fs::write(&file, body).unwrap();
        let out = python(READ_POSTED, &[file.to_str().unwrap()]);
        let (a, b) = out.trim().split_once('|').unwrap();
        s += a.parse::<u64>().unwrap();
        f += b.parse::<u64>().unwrap();
    }
    assert_eq!((s, f), (2, 2), "{posted:?}");
    // The metrics count the sessions and the reports sent.
    let sample =
        |name: &str| support::metric(&metrics, name).unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(
        sample("mta_tls_report_sessions_total{result=\"success\"}"),
        2.0
    );
    assert_eq!(
        sample("mta_tls_report_sessions_total{result=\"failure\"}"),
        2.0
    );
    assert!(sample("mta_tls_reports_total{via=\"mail\",result=\"sent\"}") >= 1.0);
    assert!(sample("mta_tls_reports_total{via=\"https\",result=\"sent\"}") >= posted.len() as f64);
    assert_eq!(
        sample("mta_tls_reports_total{via=\"https\",result=\"failed\"}"),
        0.0
    );
    sender.stop();
    mx.stop();
}

/// The report id and the failure details of a POSTed report (gzip), as JSON.
const READ_DETAILS: &str = r#"
import gzip, json, sys
report = json.loads(gzip.decompress(open(sys.argv[1], 'rb').read()))
details = [d for p in report['policies'] for d in p.get('failure-details', [])]
print(json.dumps({'report-id': report['report-id'], 'failure-details': details}))
"#;

/// The MX host's certificate names another host: each session to it is a
/// `certificate-host-mismatch` (the policy is `testing`, so the mail still goes).
/// The report's `failure-details` say which connection: our address (the configured
/// source 127.0.0.3), the MX host's (127.0.0.2), its name and the name in its
/// greeting. The report server answers the first POST with 503: the same report
/// comes again later (`post_retry = "1s"`).
#[test]
fn failure_details_name_the_connection_and_a_refused_post_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let ca = Ca::new("tlsrpt retry test CA");
    write(dir.path(), "ca.pem", &ca.pem);
    let policy = "version: STSv1\r\nmode: testing\r\nmx: mx.sts.test\r\nmax_age: 86400\r\n";
    let policy_port = https_server(ca.server_config("mta-sts.sts.test"), move |head, _| {
        if head.starts_with("GET /.well-known/mta-sts.txt HTTP/1.1\r\n") {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{policy}",
                policy.len()
            )
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned()
        }
    });
    // Every request, with the status it was answered: 503 the first time, then 201.
    let posted: Arc<Mutex<Vec<(u16, Posted)>>> = Arc::default();
    let sink = Arc::clone(&posted);
    let report_port = https_server(ca.server_config("reports.sts.test"), move |head, body| {
        let mut seen = sink.lock().unwrap();
        let status = if seen.is_empty() { 503 } else { 201 };
        seen.push((status, (head.to_owned(), body.to_vec())));
        let reason = if status == 503 {
            "Service Unavailable"
        } else {
            "Created"
        };
        format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    });
    let (mx, mx_port) = mx_host(&dir.path().join("mx"), &ca, &["wrong.sts.test"]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let zone = format!(
        "$ORIGIN sts.test.\n$TTL 300\n\
         @ IN SOA ns root 1 3600 600 86400 60\n\
         @ IN MX 10 mx\n\
         mx IN A 127.0.0.2\n\
         mta-sts IN A 127.0.0.1\n\
         reports IN A 127.0.0.1\n\
         _mta-sts IN TXT \"v=STSv1; id=1\"\n\
         _smtp._tls IN TXT \"v=TLSRPTv1; rua=https://reports.sts.test:{report_port}/tlsrpt\"\n"
    );
    let dns = runtime.block_on(TestDns::start(&[&zone]));
    let config = sender_config(
        dir.path(),
        Some(&dns.addr()),
        &format!(
            r#"port = {mx_port}
source = "127.0.0.3"
ca_file = "{d}/ca.pem"
mta_sts_port = {policy_port}
mta_sts_timeout = "10s"
[tls_reports]
interval = "2s"
post_retry = "1s"
organization_name = "Sender Org"
from = "tls-reports@sender.test"
"#,
        ),
    );
    let log = std::fs::File::create(dir.path().join("sender.log")).unwrap();
    let (sender, addr) = serve_logging(&config, &[], "info", log.into());
    let sender = Running(Some(sender));
    smtp_send(
        &addr,
        "me@sender.test",
        &["alice@sts.test"],
        "From: me@sender.test\r\nSubject: m\r\n\r\nbody\r\n",
    );
    let delivered = files_until(&dir.path().join("mx/maildir/sts.test/alice/new"), 30, |f| {
        !f.is_empty()
    });
    assert_eq!(delivered.len(), 1, "testing: delivered despite the failure");

    // Until a POST is taken (bounded).
    let start = std::time::Instant::now();
    while !posted
        .lock()
        .unwrap()
        .iter()
        .any(|(status, _)| *status == 201)
        && start.elapsed().as_secs() < 60
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let posted = posted.lock().unwrap().clone();
    let log_text = std::fs::read_to_string(dir.path().join("sender.log")).unwrap_or_default();
    let read = |i: usize, body: &[u8]| -> serde_json::Value {
        let file = write(dir.path(), &format!("posted{i}.gz"), "");
        std::fs::write(&file, body).unwrap();
        serde_json::from_str(python(READ_DETAILS, &[file.to_str().unwrap()]).trim()).unwrap()
    };
    assert!(
        posted.len() >= 2,
        "no POST after the 503 (statuses {:?}); the log:\n{log_text}",
        posted.iter().map(|(status, _)| *status).collect::<Vec<_>>()
    );
    let refused = read(0, &posted[0].1.1);
    let (i, (_, (head, body))) = posted
        .iter()
        .enumerate()
        .find(|(_, (status, _))| *status == 201)
        .unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\ncontent-type: application/tlsrpt+gzip\r\n"),
        "{head}"
    );
    let taken = read(i, body);
    assert_eq!(
        taken["report-id"], refused["report-id"],
        "the refused report came again: {taken} / {refused}"
    );
    let details = taken["failure-details"].as_array().unwrap();
    assert_eq!(details.len(), 1, "{taken}");
    let detail = &details[0];
    assert_eq!(
        detail["result-type"], "certificate-host-mismatch",
        "{detail}"
    );
    assert_eq!(detail["sending-mta-ip"], "127.0.0.3", "{detail}");
    assert_eq!(detail["receiving-ip"], "127.0.0.2", "{detail}");
    assert_eq!(detail["receiving-mx-hostname"], "mx.sts.test", "{detail}");
    assert_eq!(detail["receiving-mx-helo"], "mx.sts.test", "{detail}");
    assert_eq!(detail["failed-session-count"], 1, "{detail}");
    sender.stop();
    mx.stop();
}

/// `mta check-config` refuses bad `[tls_reports]` values, each at its key.
#[test]
fn check_config_refuses_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let file = support::config_file(
        dir.path(),
        "[tls_reports]\ninterval = \"0s\"\nfrom = \"not an address\"\nmax_failure_details = 0\npost_retry = \"0s\"\n",
    );
    let stderr = support::assert_config_refused(&file, &[]);
    for expected in [
        "[tls_reports] interval: give at least 1s",
        "[tls_reports] from: \"not an address\" is not a mail address",
        "[tls_reports] max_failure_details: give at least 1",
        "[tls_reports] post_retry: give at least 1s",
    ] {
        assert!(stderr.contains(expected), "{expected} in {stderr}");
    }
}
