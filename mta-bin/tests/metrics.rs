//! `[metrics]`: `/metrics`, `/healthz` and `/readyz` over HTTP, and every metric that
//! docs/metrics.md lists.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use support::{
    RawClient, block_on, config_file, free_address, http_get, maildir_files, rcpt_reply, serve,
    smtp_send, terminate,
};

/// Parses the Prometheus text format strictly enough to catch mistakes: every sample
/// belongs to a family declared by `# TYPE` before it, no sample appears twice, values
/// are numbers. Returns `sample (name and labels) -> value`.
fn parse_prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    let mut types = std::collections::HashMap::new();
    let mut samples = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (sample, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let name = sample.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            .unwrap_or(name);
        assert!(types.contains_key(family), "no # TYPE before {line}");
        if let Some(labels) = sample.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        assert!(
            samples.insert(sample.to_owned(), value).is_none(),
            "twice: {line}"
        );
    }
    samples
}

/// Every metric of docs/metrics.md's table is in `text` with its type, and a sample of
/// it carries exactly the labels the table names (the backquoted words of the labels
/// column outside parentheses).
fn every_documented_metric_is_served(text: &str) {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
        .unwrap();
    let mut checked = 0;
    for row in docs.lines().filter(|l| l.starts_with("| `mta_")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let (name, kind) = (cells[1].trim_matches('`'), cells[2]);
        let mut labels = Vec::new();
        let mut depth = 0;
        for (i, part) in cells[3].split('`').enumerate() {
            if i % 2 == 1 && depth == 0 {
                labels.push(part.to_owned());
            } else if i % 2 == 0 {
                depth += part.matches('(').count();
                depth -= part.matches(')').count();
            }
        }
        assert!(
            text.contains(&format!("\n# TYPE {name} {kind}\n")),
            "{name} is not served as a {kind}"
        );
        let sample = if kind == "histogram" {
            format!("{name}_bucket")
        } else {
            name.to_owned()
        };
        labels.sort();
        let served = text.lines().any(|line| {
            let Some(rest) = line.strip_prefix(&sample) else {
                return false;
            };
            let mut served: Vec<&str> = match rest.strip_prefix('{') {
                Some(l) => l
                    .split_once('}')
                    .map_or("", |(l, _)| l)
                    .split(',')
                    .map(|kv| kv.split('=').next().unwrap_or(""))
                    .collect(),
                None if rest.starts_with(' ') => Vec::new(),
                None => return false,
            };
            served.sort_unstable();
            served == labels
        });
        assert!(
            served,
            "no {sample} sample with labels {labels:?} in:\n{text}"
        );
        checked += 1;
    }
    assert!(
        checked >= 20,
        "the table of docs/metrics.md was read ({checked} rows)"
    );
}

/// `[metrics]`: /metrics in the Prometheus text format counts connections, messages and
/// deliveries as they happen; /healthz and /readyz answer 200.
#[test]
fn metrics_are_scraped_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_address();
    let cfg = config_file(
        dir.path(),
        &format!(
            "accept_any_user = true\n[metrics]\naddress = \"{metrics}\"\n[tls]\nself_signed = true\n\
                 [tls_reports]\nenabled = true\n\
                 [[account]]\nusername = \"ann@mx.test\"\npassword = \"secret\"\n"
        ),
    );
    let (child, addr) = serve(&cfg);
    assert_eq!(http_get(&metrics, "/healthz").0, "HTTP/1.1 200 OK");
    assert_eq!(
        http_get(&metrics, "/readyz"),
        ("HTTP/1.1 200 OK".into(), "ready\n".into())
    );
    assert_eq!(http_get(&metrics, "/nothing").0, "HTTP/1.1 404 Not Found");
    let before = parse_prometheus(&http_get(&metrics, "/metrics").1);
    assert_eq!(
        before["mta_smtp_messages_total{listener=\"relay\",result=\"accepted\"}"],
        0.0
    );

    smtp_send(
        &addr,
        "me@mx.test",
        &["you@mx.test"],
        "Subject: counted\r\n\r\nx\r\n",
    );
    assert_eq!(maildir_files(dir.path(), "you", 1).len(), 1);
    let start = std::time::Instant::now();
    let after = loop {
        let m = parse_prometheus(&http_get(&metrics, "/metrics").1);
        if m["mta_delivery_recipients_total{result=\"delivered\"}"] >= 1.0
            || start.elapsed().as_secs() > 10
        {
            break m;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(after["mta_smtp_connections_total{listener=\"relay\"}"], 1.0);
    assert!(
        rcpt_reply(&addr, "you@elsewhere.test").starts_with("554"),
        "no relaying"
    );
    // A command the protocol does not know: a protocol error, not a policy refusal.
    let unknown = block_on(async {
        let mut c = RawClient::connect(addr.parse().unwrap()).await;
        c.cmd("EHLO client.test").await;
        c.code("FROBNICATE").await
    });
    assert_eq!(unknown, "500 5.5.1");
    let refused = parse_prometheus(&http_get(&metrics, "/metrics").1);
    assert_eq!(
        refused["mta_smtp_refusals_total{stage=\"rcpt\",code=\"554\"}"],
        1.0
    );
    assert_eq!(
        refused["mta_smtp_protocol_errors_total{code=\"500\",status=\"5.5.1\"}"],
        1.0
    );
    // Present from the start: lookups for routing (none here: all mail is local) and
    // the age of the oldest message (none waiting once it is delivered).
    assert_eq!(
        refused["mta_dns_lookups_total{query=\"mx\",result=\"answered\"}"],
        0.0
    );
    assert_eq!(
        refused["mta_queue_oldest_message_age_seconds{state=\"waiting\"}"],
        0.0
    );
    assert_eq!(
        after["mta_smtp_messages_total{listener=\"relay\",result=\"accepted\"}"],
        1.0
    );
    assert_eq!(
        after["mta_delivery_recipients_total{result=\"delivered\"}"],
        1.0
    );
    assert_eq!(after["mta_queue_enqueued_total"], 1.0);
    assert!(after["mta_smtp_received_bytes_total{listener=\"relay\"}"] > 20.0);
    assert_eq!(after["mta_queue_messages{state=\"held\"}"], 0.0);
    // A STARTTLS by Python's smtplib (one TLS 1.3 handshake), then a wrong password and
    // a right one.
    let (host, port) = addr.rsplit_once(':').unwrap();
    let py = Command::new("python3")
        .arg("-c")
        .arg("import smtplib, ssl, sys\n\
              s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]))\n\
              s.starttls(context=ssl._create_unverified_context())\n\
              s.ehlo()\n\
              s.user, s.password = 'ann@mx.test', 'wrong'\n\
              try:\n    s.auth('PLAIN', s.auth_plain)\nexcept smtplib.SMTPAuthenticationError:\n    pass\n\
              s.login('ann@mx.test', 'secret')\n\
              s.quit()")
        .args([host, port])
        .output()
        .unwrap();
    assert!(py.status.success(), "{py:?}");
    let (_, text) = http_get(&metrics, "/metrics");
    every_documented_metric_is_served(&text);
    let tls = parse_prometheus(&text);
    assert_eq!(tls["mta_smtp_tls_handshakes_total{result=\"tls1.3\"}"], 1.0);
    assert_eq!(tls["mta_smtp_tls_handshakes_total{result=\"failed\"}"], 0.0);
    assert_eq!(
        tls["mta_smtp_logins_total{listener=\"relay\",result=\"success\"}"],
        1.0
    );
    assert_eq!(
        tls["mta_smtp_logins_total{listener=\"relay\",result=\"failure\"}"],
        1.0
    );
    assert_eq!(after["mta_delivery_delay_seconds_count"], 1.0);
    assert_eq!(
        after["mta_delivery_recipients_by_domain_total{domain=\"mx.test\",result=\"delivered\"}"],
        1.0
    );
    // The message was checked (relay listener, not trusted): unsigned, and one SPF
    // verdict (which one depends on this machine's DNS).
    assert_eq!(
        after["mta_auth_results_total{method=\"dkim\",result=\"none\"}"],
        1.0
    );
    let spf: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("mta_auth_results_total{method=\"spf\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(spf, 1.0, "one SPF verdict");
    assert_eq!(after["mta_delivery_delay_seconds_bucket{le=\"+Inf\"}"], 1.0);
    assert_eq!(
        after["mta_delivery_delay_seconds_bucket{le=\"5\"}"], 1.0,
        "delivered within 5 s"
    );
    terminate(child);
}
