//! The defences of `docs/anti-abuse.md` through the `mta` binary: a listener's
//! `proxy_protocol`, `[early_talkers]` and `[helo_checks]`, configured in the file,
//! checked by `mta check-config`, applied by `mta serve` (and by a reload), counted in
//! `[metrics]`. Clients are plain sockets, bound to other loopback addresses
//! (127.0.0.2, 127.0.0.3, ...) where a test needs clients the server tells apart.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{
    RawClient, block_on, free_address, maildir_files, mta, run_with, serve, smtp_send, terminate,
    write,
};

/// `mta.toml` in `dir`: one relay listener on `listen` with `listener` (its more keys),
/// mail for any user at mx.test, sender authentication off (no DNS), then `extra`.
fn config(dir: &Path, listen: &str, listener: &str, extra: &str) -> PathBuf {
    let d = dir.display();
    write(
        dir,
        "mta.toml",
        &format!(
            "hostname = \"mx.test\"\n\
             [[listener]]\naddress = \"{listen}\"\nmode = \"relay\"\n{listener}\
             [queue]\npath = \"{d}/queue\"\n\
             [local]\ndomains = [\"mx.test\"]\nmaildir = \"{d}/maildir\"\naccept_any_user = true\n\
             [auth_checks]\nspf = \"off\"\ndkim = \"off\"\ndmarc = \"off\"\narc = \"off\"\n\
             {extra}"
        ),
    )
}

/// A TCP connection to `addr` from the loopback address `source`.
fn connect_from(source: &str, addr: &str) -> Conn {
    let (source, addr): (IpAddr, SocketAddr) = (source.parse().unwrap(), addr.parse().unwrap());
    let stream = block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        socket.connect(addr).await.unwrap().into_std().unwrap()
    });
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    Conn {
        reader: BufReader::new(stream.try_clone().unwrap()),
        stream,
    }
}

/// A plain SMTP connection, line by line.
struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).unwrap();
    }

    /// The next reply (its lines joined), or `None` when the server closed.
    fn reply(&mut self) -> Option<String> {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => reply.push_str(&line),
            }
            if line.as_bytes().get(3) == Some(&b' ') {
                return Some(reply);
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n"));
        self.reply()
            .unwrap_or_else(|| panic!("closed after {line}"))
    }

    /// Whether the server closes the connection without a byte (within 10 s).
    fn closed_silently(mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => rest.is_empty(),
            // Reset: closed with our bytes unread.
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset && rest.is_empty(),
        }
    }
}

/// The value of the metric sample `sample` (name and labels, as served) at `metrics`.
fn metric(metrics: &str, sample: &str) -> Option<f64> {
    let mut tcp = TcpStream::connect(metrics).unwrap();
    tcp.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {metrics}\r\n\r\n").as_bytes())
        .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

/// Waits (up to 10 s) for the metric sample `sample` to be `expected`.
fn assert_metric(metrics: &str, sample: &str, expected: f64) {
    let start = Instant::now();
    loop {
        let value = metric(metrics, sample);
        if value == Some(expected) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{sample} is {value:?}, not {expected}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A PROXY protocol listener takes the real client's address from the header sent by a
/// load balancer, and the whole chain sees it (the `Received:` field shows it); a
/// connection without a header, with a bad one, or not from a load balancer is closed
/// without a greeting, and counted.
#[test]
fn proxy_protocol_gives_the_stages_the_real_client() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_address();
    let cfg = config(
        dir.path(),
        "127.0.0.1:0",
        "proxy_protocol = { load_balancers = [\"127.0.0.1/32\"], timeout = \"1s\" }\n",
        &format!("[metrics]\naddress = \"{metrics}\"\n"),
    );
    let (child, addr) = serve(&cfg);

    // Through the load balancer: the header, then SMTP as usual.
    let mut c = connect_from("127.0.0.1", &addr);
    c.send("PROXY TCP4 192.0.2.7 127.0.0.1 50123 25\r\n");
    let greeting = c.reply().unwrap();
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(c.cmd("EHLO client.example.net").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<ann@example.net>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<you@mx.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let queued = c.cmd("Subject: proxied\r\n\r\nhello\r\n.");
    assert!(queued.starts_with("250 2.0.0 Ok: queued as"), "{queued}");
    c.cmd("QUIT");
    let files = maildir_files(dir.path(), "you", 1);
    assert_eq!(files.len(), 1);
    assert!(
        files[0].contains("Received: from client.example.net ([192.0.2.7])"),
        "{}",
        files[0]
    );
    assert!(!files[0].contains("[127.0.0.1]"), "{}", files[0]);

    // No header within the timeout: closed without a greeting.
    let start = Instant::now();
    assert!(connect_from("127.0.0.1", &addr).closed_silently());
    assert!(start.elapsed() >= Duration::from_millis(900));
    // SMTP where the header should be: closed at once.
    let mut c = connect_from("127.0.0.1", &addr);
    c.send("EHLO client.example.net\r\n");
    assert!(c.closed_silently());
    // Not from a load balancer, even with a header.
    let mut c = connect_from("127.0.0.2", &addr);
    c.send("PROXY TCP4 192.0.2.7 127.0.0.1 50123 25\r\n");
    assert!(c.closed_silently());

    for (reason, n) in [("timeout", 1.0), ("malformed", 1.0), ("untrusted", 1.0)] {
        assert_metric(
            &metrics,
            &format!("mta_smtp_proxy_refused_total{{listener=\"relay\",reason=\"{reason}\"}}"),
            n,
        );
    }
    assert_metric(
        &metrics,
        "mta_smtp_messages_total{listener=\"relay\",result=\"accepted\"}",
        1.0,
    );
    terminate(child);
}

/// `[early_talkers]` in enforce mode with a greeting delay: a client that waits gets
/// the greeting after the delay (and, having passed, no delay next time); one that
/// talks first gets `554 5.5.0` and is refused at once for a while. `[helo_checks]` at
/// its default (tag) counts a bad name and lets the client go on.
#[test]
fn early_talkers_are_refused_and_polite_clients_served() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_address();
    let cfg = config(
        dir.path(),
        "127.0.0.1:0",
        "",
        &format!(
            "[early_talkers]\nmode = \"enforce\"\ngreeting_delay = \"1s\"\n\
             [metrics]\naddress = \"{metrics}\"\n"
        ),
    );
    let (child, addr) = serve(&cfg);

    // Polite, from 127.0.0.2: waits out the delay, then is served.
    let start = Instant::now();
    let mut polite = connect_from("127.0.0.2", &addr);
    let greeting = polite.reply().unwrap();
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(start.elapsed() >= Duration::from_millis(900), "no delay");
    // A HELO name without a dot: tagged, not refused.
    assert!(polite.cmd("EHLO localhost").starts_with("250"));
    assert!(polite.cmd("MAIL FROM:<ann@example.net>").starts_with("250"));
    assert!(polite.cmd("RCPT TO:<you@mx.test>").starts_with("250"));
    assert!(polite.cmd("DATA").starts_with("354"));
    let queued = polite.cmd("Subject: polite\r\n\r\nhello\r\n.");
    assert!(queued.starts_with("250 2.0.0 Ok: queued as"), "{queued}");
    polite.cmd("QUIT");
    // It passed: no delay the next time.
    let start = Instant::now();
    let greeting = connect_from("127.0.0.2", &addr).reply().unwrap();
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "delayed again: {:?}",
        start.elapsed()
    );

    // An early talker, from 127.0.0.3: refused instead of greeted, then closed.
    let mut early = connect_from("127.0.0.3", &addr);
    early.send("EHLO early.example.net\r\n");
    let refusal = early.reply().unwrap();
    assert!(refusal.starts_with("554 5.5.0 "), "{refusal}");
    assert!(refusal.contains("before the greeting"), "{refusal}");
    assert!(early.closed_silently());
    // And refused at once for a while, however polite now.
    let start = Instant::now();
    let mut again = connect_from("127.0.0.3", &addr);
    let refusal = again.reply().unwrap();
    assert!(refusal.starts_with("554 5.5.0 "), "{refusal}");
    assert!(start.elapsed() < Duration::from_millis(900));
    assert!(again.closed_silently());

    assert_eq!(maildir_files(dir.path(), "you", 1).len(), 1);
    let relay = "listener=\"relay\"";
    for (sample, n) in [
        (
            format!(
                "mta_smtp_early_talkers_total{{{relay},test=\"pregreet\",result=\"rejected\"}}"
            ),
            2.0,
        ),
        (
            format!("mta_smtp_early_talkers_total{{{relay},test=\"pregreet\",result=\"tagged\"}}"),
            0.0,
        ),
        (
            format!("mta_smtp_greeting_delay_passes_total{{{relay},result=\"waited\"}}"),
            1.0,
        ),
        (
            format!("mta_smtp_greeting_delay_passes_total{{{relay},result=\"cached\"}}"),
            1.0,
        ),
        ("mta_smtp_early_talker_cache_entries".to_owned(), 2.0),
        (
            "mta_smtp_helo_checks_total{check=\"syntax\",result=\"tagged\"}".to_owned(),
            1.0,
        ),
    ] {
        assert_metric(&metrics, &sample, n);
    }
    terminate(child);
}

/// `[helo_checks]` in enforce mode: a bare IP address or a name without a dot gets
/// `501 5.5.2`, our own name `550 5.7.1`; the client may try again with a good name,
/// and its mail goes through.
#[test]
fn helo_checks_refuse_bad_names_and_pass_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_address();
    let cfg = config(
        dir.path(),
        "127.0.0.1:0",
        "",
        &format!("[helo_checks]\nmode = \"enforce\"\n[metrics]\naddress = \"{metrics}\"\n"),
    );
    let (child, addr) = serve(&cfg);
    let said = block_on(async {
        let mut c = RawClient::connect(addr.parse().unwrap()).await;
        let mut said = Vec::new();
        for name in [
            "EHLO 192.0.2.1",
            "HELO localhost",
            "EHLO mx.test",
            "EHLO mail.example.net",
        ] {
            said.push(c.cmd(name).await.to_string());
        }
        said
    });
    assert!(said[0].starts_with("501 5.5.2 "), "{said:?}");
    assert!(said[0].contains("[192.0.2.1]"), "{said:?}");
    assert!(said[1].starts_with("501 5.5.2 "), "{said:?}");
    assert!(said[2].starts_with("550 5.7.1 "), "{said:?}");
    assert!(said[3].starts_with("250"), "{said:?}");
    // A good name: mail goes through (smtp_send says EHLO client.test).
    smtp_send(
        &addr,
        "ann@example.net",
        &["you@mx.test"],
        "Subject: fine\r\n\r\nhello\r\n",
    );
    assert_eq!(maildir_files(dir.path(), "you", 1).len(), 1);
    for (sample, n) in [
        (
            "mta_smtp_helo_checks_total{check=\"bare_ip\",result=\"rejected\"}",
            1.0,
        ),
        (
            "mta_smtp_helo_checks_total{check=\"syntax\",result=\"rejected\"}",
            1.0,
        ),
        (
            "mta_smtp_helo_checks_total{check=\"own_name\",result=\"rejected\"}",
            1.0,
        ),
        (
            "mta_smtp_helo_checks_total{check=\"bare_ip\",result=\"tagged\"}",
            0.0,
        ),
        ("mta_smtp_refusals_total{stage=\"helo\",code=\"501\"}", 2.0),
        ("mta_smtp_refusals_total{stage=\"helo\",code=\"550\"}", 1.0),
    ] {
        assert_metric(&metrics, sample, n);
    }
    terminate(child);
}

/// A reload applies the defences to new connections, a listener's `proxy_protocol`
/// included (no restart: the listener's address and mode stay).
#[test]
fn a_reload_applies_the_defences() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_address();
    let cfg = config(dir.path(), &listen, "", "");
    let (child, addr) = serve(&cfg);
    let ehlo = |c: &mut Conn| c.cmd("EHLO 192.0.2.1");
    let mut c = connect_from("127.0.0.1", &addr);
    c.reply().unwrap();
    assert!(ehlo(&mut c).starts_with("250"), "tag mode by default");
    c.cmd("QUIT");

    config(
        dir.path(),
        &listen,
        "proxy_protocol = { load_balancers = [\"127.0.0.1\"], timeout = \"1s\" }\n",
        "[helo_checks]\nmode = \"enforce\"\n",
    );
    let (code, stdout, stderr) = run_with("reload", &cfg);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let mut c = connect_from("127.0.0.1", &addr);
    c.send("PROXY TCP4 192.0.2.8 127.0.0.1 40000 25\r\n");
    assert!(c.reply().unwrap().starts_with("220 "));
    let refused = ehlo(&mut c);
    assert!(refused.starts_with("501 5.5.2 "), "{refused}");
    c.cmd("QUIT");
    let mut c = connect_from("127.0.0.1", &addr);
    c.send("EHLO client.example.net\r\n");
    assert!(c.closed_silently(), "a PROXY listener now");
    terminate(child);
}

/// `mta check-config` accepts the three sections, and tells an empty list of load
/// balancers with its key and line (so does `mta serve`, which does not start).
#[test]
fn check_config_accepts_the_defences_and_tells_an_empty_load_balancer_list() {
    let dir = tempfile::tempdir().unwrap();
    let good = config(
        dir.path(),
        "127.0.0.1:0",
        "proxy_protocol = { load_balancers = [\"10.0.0.5/32\", \"2001:db8::5\"], timeout = \"5s\" }\n",
        "[early_talkers]\nmode = \"enforce\"\ngreeting_delay = \"6s\"\nlisteners = [\"relay\"]\n\
         pass_ttl = \"1d\"\nfail_ttl = \"10m\"\nmax_cached = 100000\n\
         [helo_checks]\nmode = \"enforce\"\nown_addresses = [\"192.0.2.25\"]\nlisteners = [\"relay\"]\n",
    );
    let (code, stdout, stderr) = run_with("check-config", &good);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.ends_with(": ok\n"), "{stdout}");

    let bad = config(
        dir.path(),
        "127.0.0.1:0",
        "proxy_protocol = { load_balancers = [] }\n",
        "[helo_checks]\nmode = \"block\"\n",
    );
    let (code, _, stderr) = run_with("check-config", &bad);
    assert_eq!(code, Some(2), "{stderr}");
    let name = bad.display();
    for expected in [
        format!(
            "{name}: line 5: [[listener]] proxy_protocol load_balancers: give the load balancers' addresses"
        ),
        format!("{name}: line 18: [helo_checks] mode: unknown variant `block`"),
    ] {
        assert!(stderr.contains(&expected), "{expected} in {stderr}");
    }
    let out = mta()
        .args(["serve", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("line 5: [[listener]] proxy_protocol"),
        "{stderr}"
    );
}
