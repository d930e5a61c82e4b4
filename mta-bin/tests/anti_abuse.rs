//! The defences of `docs/anti-abuse.md` through the `mta` binary: a listener's
//! `proxy_protocol`, `[early_talkers]`, `[helo_checks]`, `[rate_limits]`, `[greylist]`,
//! `[dnsbl]` and `[reverse_dns]`, configured in the file, checked by `mta check-config`,
//! applied by `mta serve` (and by a reload), counted in `[metrics]`. Clients are plain
//! sockets, bound to other loopback addresses (127.0.0.2, 127.0.0.3, ...) where a test
//! needs clients the server tells apart (the rate limits' tests set `exempt_networks =
//! []`: loopback is exempt by default). The DNS lists are served by a dnsmasq each test
//! starts (`.ci/deps/dnsmasq.sh` installs it); the reverse DNS of a loopback client is
//! answered by the resolver itself (`localhost`, RFC 6761), and no test asks this
//! machine's DNS: those with other client addresses turn reverse DNS off.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use smtp_client::testing::daemons::dnsmasq;

use support::{
    RawClient, assert_config_ok, assert_config_refused, block_on, free_address, maildir_files,
    metric, python, run_ok, run_with, serve, smtp_send, terminate, write,
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

/// A test's directory, and a free address for its server's `[metrics]`.
struct Setup {
    dir: tempfile::TempDir,
    metrics: String,
}

impl Setup {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            metrics: free_address(),
        }
    }

    /// [`config`] in the test's directory, with `[metrics]` on `self.metrics` after
    /// `extra`.
    fn config(&self, listen: &str, listener: &str, extra: &str) -> PathBuf {
        let metrics = &self.metrics;
        config(
            self.dir.path(),
            listen,
            listener,
            &format!("{extra}[metrics]\naddress = \"{metrics}\"\n"),
        )
    }

    /// Waits for each metric sample of `expected` to have its value ([`assert_metric`]).
    fn assert_metrics<S: AsRef<str>>(&self, expected: impl IntoIterator<Item = (S, f64)>) {
        for (sample, n) in expected {
            assert_metric(&self.metrics, sample.as_ref(), n);
        }
    }
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

/// [`connect_from`], then the greeting read (whatever it says).
fn greeted(source: &str, addr: &str) -> Conn {
    let mut c = connect_from(source, addr);
    c.reply().unwrap();
    c
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

    /// EHLO `name`, then MAIL FROM `from`, whatever the replies.
    fn mail_from(&mut self, name: &str, from: &str) {
        self.cmd(&format!("EHLO {name}"));
        self.cmd(&format!("MAIL FROM:<{from}>"));
    }

    /// DATA, which must get 354, then a message with the subject `subject`: the reply to
    /// its end.
    fn message(&mut self, subject: &str) -> String {
        assert!(self.cmd("DATA").starts_with("354"));
        self.cmd(&format!("Subject: {subject}\r\n\r\nhello\r\n."))
    }

    /// A transaction that must pass, after the greeting: EHLO `name`, MAIL FROM
    /// `ann@example.net`, RCPT TO `you@mx.test` (each 250), the message `subject`
    /// (queued), then QUIT.
    fn send_mail(&mut self, name: &str, subject: &str) {
        assert!(self.cmd(&format!("EHLO {name}")).starts_with("250"));
        assert!(self.cmd("MAIL FROM:<ann@example.net>").starts_with("250"));
        assert!(self.cmd("RCPT TO:<you@mx.test>").starts_with("250"));
        let queued = self.message(subject);
        assert!(queued.starts_with("250 2.0.0 Ok: queued as"), "{queued}");
        self.cmd("QUIT");
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
    let setup = Setup::new();
    let cfg = setup.config(
        "127.0.0.1:0",
        "proxy_protocol = { load_balancers = [\"127.0.0.1/32\"], timeout = \"1s\" }\n",
        "[reverse_dns]\nmode = \"off\"\n",
    );
    let (child, addr) = serve(&cfg);

    // Through the load balancer: the header, then SMTP as usual.
    let mut c = connect_from("127.0.0.1", &addr);
    c.send("PROXY TCP4 192.0.2.7 127.0.0.1 50123 25\r\n");
    let greeting = c.reply().unwrap();
    assert!(greeting.starts_with("220 "), "{greeting}");
    c.send_mail("client.example.net", "proxied");
    let files = maildir_files(setup.dir.path(), "you", 1);
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

    setup.assert_metrics(
        [("timeout", 1.0), ("malformed", 1.0), ("untrusted", 1.0)].map(|(reason, n)| {
            (
                format!("mta_smtp_proxy_refused_total{{listener=\"relay\",reason=\"{reason}\"}}"),
                n,
            )
        }),
    );
    assert_metric(
        &setup.metrics,
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
    let setup = Setup::new();
    let cfg = setup.config(
        "127.0.0.1:0",
        "",
        "[early_talkers]\nmode = \"enforce\"\ngreeting_delay = \"1s\"\n",
    );
    let (child, addr) = serve(&cfg);

    // Polite, from 127.0.0.2: waits out the delay, then is served.
    let start = Instant::now();
    let mut polite = connect_from("127.0.0.2", &addr);
    let greeting = polite.reply().unwrap();
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(start.elapsed() >= Duration::from_millis(900), "no delay");
    // A HELO name without a dot: tagged, not refused.
    polite.send_mail("localhost", "polite");
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

    assert_eq!(maildir_files(setup.dir.path(), "you", 1).len(), 1);
    let relay = "listener=\"relay\"";
    setup.assert_metrics([
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
    ]);
    terminate(child);
}

/// `[helo_checks]` in enforce mode: a bare IP address or a name without a dot gets
/// `501 5.5.2`, our own name `550 5.7.1`; the client may try again with a good name,
/// and its mail goes through.
#[test]
fn helo_checks_refuse_bad_names_and_pass_good_ones() {
    let setup = Setup::new();
    let cfg = setup.config("127.0.0.1:0", "", "[helo_checks]\nmode = \"enforce\"\n");
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
    assert_eq!(maildir_files(setup.dir.path(), "you", 1).len(), 1);
    setup.assert_metrics([
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
    ]);
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
    let mut c = greeted("127.0.0.1", &addr);
    assert!(ehlo(&mut c).starts_with("250"), "tag mode by default");
    c.cmd("QUIT");

    config(
        dir.path(),
        &listen,
        "proxy_protocol = { load_balancers = [\"127.0.0.1\"], timeout = \"1s\" }\n",
        "[helo_checks]\nmode = \"enforce\"\n[reverse_dns]\nmode = \"off\"\n",
    );
    run_ok("reload", &cfg);
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
    assert_config_ok(&good);

    let bad = config(
        dir.path(),
        "127.0.0.1:0",
        "proxy_protocol = { load_balancers = [] }\n",
        "[helo_checks]\nmode = \"block\"\n",
    );
    assert_config_refused(
        &bad,
        &[
            "line 5: [[listener]] proxy_protocol load_balancers: give the load balancers' addresses",
            "line 18: [helo_checks] mode: unknown variant `block`",
        ],
    );
    let (code, _, stderr) = run_with("serve", &bad);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("line 5: [[listener]] proxy_protocol"),
        "{stderr}"
    );
}

/// The `mta.toml` at `path` (written by [`config`]) rewritten to know only
/// `you@mx.test` (and postmaster) instead of any user.
fn known_users_only(path: PathBuf) -> PathBuf {
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "accept_any_user = true\n",
        "accept_any_user = false\nmailboxes = [\"you@mx.test\"]\n",
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `[rate_limits] connections_per_ip`: the connection over the rate gets `421 4.7.0`
/// with the time to wait, and is closed; another address still connects. Counted. The
/// counts survive a reload that leaves `[rate_limits]` as it was.
#[test]
fn a_connection_flood_is_refused_421() {
    let setup = Setup::new();
    let listen = free_address();
    let extra = |more: &str| {
        format!("[rate_limits]\nconnections_per_ip = \"3/1m\"\nexempt_networks = []\n{more}")
    };
    let cfg = setup.config(&listen, "", &extra(""));
    let (child, addr) = serve(&cfg);
    for _ in 0..3 {
        let mut c = connect_from("127.0.0.2", &addr);
        let greeting = c.reply().unwrap();
        assert!(greeting.starts_with("220 "), "{greeting}");
        c.cmd("QUIT");
    }
    // Another section changes; the rate limits keep their count.
    setup.config(&listen, "", &extra("[helo_checks]\nmode = \"enforce\"\n"));
    run_ok("reload", &cfg);
    let mut flood = connect_from("127.0.0.2", &addr);
    let refusal = flood.reply().unwrap();
    assert!(
        refusal.starts_with("421 4.7.0 ")
            && refusal.contains("Too many connections from your address; try again in "),
        "{refusal}"
    );
    assert!(flood.closed_silently(), "closed after the 421");
    // Another address is not concerned.
    let mut other = connect_from("127.0.0.3", &addr);
    assert!(other.reply().unwrap().starts_with("220 "));
    other.cmd("QUIT");
    setup.assert_metrics([
        (
            "mta_smtp_rate_limit_refusals_total{limit=\"connections_per_ip\"}",
            1.0,
        ),
        (
            "mta_smtp_rate_limit_hits_total{limit=\"connections_per_ip\"}",
            1.0,
        ),
        (
            "mta_smtp_rate_limit_refusals_total{limit=\"messages_per_ip\"}",
            0.0,
        ),
        ("mta_smtp_rate_limit_tarpitted_total", 0.0),
        ("mta_smtp_rate_limit_lockouts_total", 0.0),
    ]);
    assert!(metric(&setup.metrics, "mta_smtp_rate_limit_tracked").unwrap() >= 2.0);
    terminate(child);
}

/// `[rate_limits.failed_rcpts]`: a dictionary attack (up to 200 unknown recipients) is
/// refused `550` recipient by recipient, tarpitted past `tarpit_after`, then cut off
/// with `421 4.7.0` past `disconnect_after`, and refused at once when it comes back;
/// a known recipient from another address still gets through. Relaying refusals count
/// the same.
#[test]
fn a_dictionary_attack_is_tarpitted_and_cut_off() {
    let setup = Setup::new();
    let cfg = known_users_only(setup.config(
        "127.0.0.1:0",
        "",
        "[rate_limits]\nexempt_networks = []\n\
         [rate_limits.failed_rcpts]\ntarpit_after = 5\ndisconnect_after = 10\n\
         tarpit_step = \"100ms\"\ntarpit_max = \"200ms\"\n",
    ));
    let (child, addr) = serve(&cfg);
    let mut bot = greeted("127.0.0.2", &addr);
    bot.mail_from("bot.example.net", "spam@example.net");
    let mut answers = Vec::new();
    let mut slowest = Duration::ZERO;
    for i in 0..200 {
        let start = Instant::now();
        bot.send(&format!("RCPT TO:<guess{i}@mx.test>\r\n"));
        let Some(reply) = bot.reply() else { break };
        slowest = slowest.max(start.elapsed());
        let last = reply.starts_with("421");
        answers.push(reply);
        if last {
            break;
        }
    }
    let cut = answers.last().unwrap();
    assert!(
        cut.starts_with("421 4.7.0 ")
            && cut.contains("Too many unknown recipients from your address; try again in "),
        "{answers:?}"
    );
    assert_eq!(answers.len(), 11, "{answers:?}");
    assert!(
        answers[..10].iter().all(|a| a.starts_with("550")),
        "{answers:?}"
    );
    assert!(
        slowest >= Duration::from_millis(100),
        "no tarpit: {slowest:?}"
    );
    assert!(bot.closed_silently(), "closed after the 421");
    // Back again: cut off at the first RCPT.
    let mut again = greeted("127.0.0.2", &addr);
    again.mail_from("bot.example.net", "spam@example.net");
    let refused = again.cmd("RCPT TO:<you@mx.test>");
    assert!(refused.starts_with("421 4.7.0 "), "{refused}");
    // Another address gets its mail through.
    let mut good = greeted("127.0.0.3", &addr);
    good.mail_from("mail.example.org", "ann@example.org");
    assert!(good.cmd("RCPT TO:<nobody@mx.test>").starts_with("550"));
    assert!(good.cmd("RCPT TO:<you@mx.test>").starts_with("250"));
    good.cmd("QUIT");
    // An open-relay scanner meets the same: its refusals (554 5.7.1) count too.
    let mut scanner = greeted("127.0.0.4", &addr);
    scanner.mail_from("scan.example.net", "probe@example.net");
    let answers: Vec<String> = (0..11)
        .map(|i| scanner.cmd(&format!("RCPT TO:<x{i}@elsewhere.example>")))
        .collect();
    assert!(
        answers[..10].iter().all(|a| a.starts_with("554 5.7.1 ")),
        "{answers:?}"
    );
    assert!(answers[10].starts_with("421 4.7.0 "), "{answers:?}");
    setup.assert_metrics([
        (
            "mta_smtp_rate_limit_refusals_total{limit=\"failed_rcpts_per_ip\"}",
            3.0,
        ),
        ("mta_smtp_rate_limit_tarpitted_total", 10.0),
    ]);
    terminate(child);
}

/// One session from `source`: STARTTLS, then AUTH PLAIN with `password`; prints the
/// reply's code and text.
const LOGIN: &str = "import smtplib, ssl, sys, base64\n\
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), source_address=(sys.argv[3], 0))\n\
s.starttls(context=ssl._create_unverified_context())\n\
s.ehlo('client.example.net')\n\
token = base64.b64encode(b'\\0ann@mx.test\\0' + sys.argv[4].encode()).decode()\n\
code, text = s.docmd('AUTH', 'PLAIN ' + token)\n\
print(code, text.decode())\n\
s.quit()\n";

/// `[rate_limits.failed_logins]` at its defaults: 20 wrong passwords from one address
/// over 20 sessions: the first 10 are refused `535`, then the address is locked out
/// (`454 4.7.0` with the time to come back, even with the right password), while
/// another address still logs in.
#[test]
fn wrong_passwords_lock_an_address_out() {
    let setup = Setup::new();
    let cfg = setup.config(
        "127.0.0.1:0",
        "",
        "[tls]\nself_signed = true\n[[account]]\nusername = \"ann@mx.test\"\npassword = \"secret\"\n\
         [rate_limits]\nexempt_networks = []\n",
    );
    let (child, addr) = serve(&cfg);
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(python(LOGIN, &[host, port, "127.0.0.2", "wrong"]));
    }
    assert!(
        answers[..10].iter().all(|a| a.starts_with("535")),
        "{answers:?}"
    );
    assert!(
        answers[10..].iter().all(|a| a.starts_with("454 4.7.0 ")
            && a.contains("Too many failed logins from your address; try again in ")),
        "{answers:?}"
    );
    let locked = python(LOGIN, &[host, port, "127.0.0.2", "secret"]);
    assert!(locked.starts_with("454 4.7.0 "), "{locked}");
    let other = python(LOGIN, &[host, port, "127.0.0.3", "secret"]);
    assert!(other.starts_with("235"), "{other}");
    setup.assert_metrics([
        ("mta_smtp_rate_limit_lockouts_total", 1.0),
        (
            "mta_smtp_rate_limit_refusals_total{limit=\"failed_logins_per_ip\"}",
            11.0,
        ),
        (
            "mta_smtp_logins_total{listener=\"relay\",result=\"success\"}",
            1.0,
        ),
    ]);
    terminate(child);
}

/// EHLO mail.example.org, MAIL FROM `from`, RCPT TO `to` on `addr` from 127.0.0.1;
/// the RCPT reply, and the connection (still in its transaction).
fn rcpt(addr: &str, from: &str, to: &str) -> (String, Conn) {
    rcpt_from("127.0.0.1", addr, from, to)
}

/// [`rcpt`] from the loopback address `source`.
fn rcpt_from(source: &str, addr: &str, from: &str, to: &str) -> (String, Conn) {
    let mut c = greeted(source, addr);
    c.mail_from("mail.example.org", from);
    (c.cmd(&format!("RCPT TO:<{to}>")), c)
}

/// `[greylist]` with a 1 s delay: a new triplet is deferred `451 4.7.1` with the time
/// to come back, a retry within the delay too, a retry after it passes and its message
/// arrives. The state survives a
/// restart of `mta` (SIGTERM, start again): a triplet first seen before it passes
/// after it, and one that passed passes at once.
#[test]
fn greylisting_defers_then_passes_and_survives_a_restart() {
    let setup = Setup::new();
    let cfg = setup.config(
        "127.0.0.1:0",
        "",
        "[greylist]\nmode = \"enforce\"\ndelay = \"1s\"\n",
    );
    let (child, addr) = serve(&cfg);
    let (first, mut c) = rcpt(&addr, "ann@example.org", "you@mx.test");
    assert!(
        first.starts_with("451 4.7.1 Greylisted: try again in 1 second"),
        "{first}"
    );
    c.cmd("QUIT");
    // A reload that leaves `[greylist]` as it was keeps what it learned.
    run_ok("reload", &cfg);
    let (early, mut c) = rcpt(&addr, "ann@example.org", "you@mx.test");
    assert!(
        early.starts_with("451 4.7.1 Greylisted: try again in 1 second"),
        "{early}"
    );
    c.cmd("QUIT");
    std::thread::sleep(Duration::from_millis(1100));
    let (retry, mut c) = rcpt(&addr, "ann@example.org", "you@mx.test");
    assert!(retry.starts_with("250"), "{retry}");
    let queued = c.message("greylisted");
    assert!(queued.starts_with("250 2.0.0 Ok: queued as"), "{queued}");
    c.cmd("QUIT");
    assert_eq!(maildir_files(setup.dir.path(), "you", 1).len(), 1);
    // A second triplet, seen once before the restart.
    let second_seen = Instant::now();
    let (other, mut c) = rcpt(&addr, "bob@example.org", "you@mx.test");
    assert!(other.starts_with("451 4.7.1 "), "{other}");
    c.cmd("QUIT");
    setup.assert_metrics([
        ("mta_smtp_greylist_total{result=\"deferred\"}", 3.0),
        ("mta_smtp_greylist_total{result=\"passed\"}", 1.0),
        ("mta_smtp_greylist_entries", 2.0),
        ("mta_smtp_greylist_clients", 1.0),
    ]);
    terminate(child);
    let state = std::fs::read_to_string(setup.dir.path().join("greylist.state")).unwrap();
    assert!(state.contains("bob@example.org"), "{state}");

    let (child, addr) = serve(&cfg);
    let (passed, mut c) = rcpt(&addr, "ann@example.org", "you@mx.test");
    assert!(passed.starts_with("250"), "{passed}");
    c.cmd("QUIT");
    // The delay of the second triplet ends after the restart.
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(second_seen.elapsed()));
    let (retry, mut c) = rcpt(&addr, "bob@example.org", "you@mx.test");
    assert!(retry.starts_with("250"), "kept across the restart: {retry}");
    c.cmd("QUIT");
    setup.assert_metrics([
        ("mta_smtp_greylist_total{result=\"deferred\"}", 0.0),
        ("mta_smtp_greylist_total{result=\"passed\"}", 2.0),
    ]);
    terminate(child);
}

/// `[dnsbl]` in enforce mode with a blocklist and an allowlist served by dnsmasq: a
/// listed client has its recipient refused with the exact text, at RCPT; a client the
/// allowlist also names, and a client no list names, get their mail through. The
/// lists' metrics count it. Then, after a reload to tag mode, the listed client's
/// message goes through with an `X-DNSBL` header.
#[test]
fn a_blocklisted_client_is_refused_at_rcpt() {
    let Some(dns) = dnsmasq(&[
        "--address=/1.0.0.127.zen.test/127.0.0.2",
        "--address=/3.0.0.127.zen.test/127.0.0.2",
        "--address=/3.0.0.127.wl.test/127.0.10.2",
    ]) else {
        return;
    };
    let setup = Setup::new();
    let listen = free_address();
    let extra = |mode: &str| {
        format!(
            "[dns]\nnameservers = [\"{}\"]\n\
             [dnsbl]\nmode = \"{mode}\"\nlists = [\"zen.test=127.0.0.[2..11]*2\", \"wl.test*-5\"]\n\
             threshold = 2\n",
            dns.address
        )
    };
    let cfg = setup.config(&listen, "", &extra("enforce"));
    let (child, addr) = serve(&cfg);
    let session = |source: &str| rcpt_from(source, &addr, "ann@example.org", "you@mx.test");
    let (listed, mut c) = session("127.0.0.1");
    assert_eq!(
        listed,
        "554 5.7.1 Service unavailable; client [127.0.0.1] blocked using zen.test\r\n"
    );
    c.cmd("QUIT");
    for source in ["127.0.0.3", "127.0.0.2"] {
        let (passed, mut c) = session(source);
        assert!(passed.starts_with("250"), "{source}: {passed}");
        assert!(c.message("clean").starts_with("250"));
        c.cmd("QUIT");
    }
    setup.assert_metrics([
        ("mta_dnsbl_verdicts_total{verdict=\"refused\"}", 1.0),
        ("mta_dnsbl_verdicts_total{verdict=\"clean\"}", 2.0),
        ("mta_dnsbl_hits_total{list=\"zen.test\"}", 2.0),
        ("mta_dnsbl_hits_total{list=\"wl.test\"}", 1.0),
        ("mta_dnsbl_queries_total{list=\"zen.test\"}", 3.0),
        (
            "mta_dnsbl_errors_total{list=\"zen.test\",reason=\"dns\"}",
            0.0,
        ),
        ("mta_smtp_refusals_total{stage=\"rcpt\",code=\"554\"}", 1.0),
    ]);
    let files = maildir_files(setup.dir.path(), "you", 2);
    let allowlisted = files.iter().find(|f| f.contains("[127.0.0.3]")).unwrap();
    assert!(
        allowlisted.contains("X-DNSBL: clean; score=-3; threshold=2;"),
        "{allowlisted}"
    );

    // Tag mode: the listed client goes on, and its message says why it is suspect.
    setup.config(&listen, "", &extra("tag"));
    run_ok("reload", &cfg);
    let (tagged, mut c) = session("127.0.0.1");
    assert!(tagged.starts_with("250"), "{tagged}");
    assert!(c.message("tagged").starts_with("250"));
    c.cmd("QUIT");
    let files = maildir_files(setup.dir.path(), "you", 3);
    let tagged = files
        .iter()
        .find(|f| f.contains("Subject: tagged"))
        .unwrap();
    assert!(
        tagged.contains("X-DNSBL: listed; score=2; threshold=2;\n\tzen.test=127.0.0.2 (client [127.0.0.1], weight 2)"),
        "{tagged}"
    );
    assert_metric(
        &setup.metrics,
        "mta_dnsbl_verdicts_total{verdict=\"tagged\"}",
        1.0,
    );
    terminate(child);
}

/// `mta check-config` accepts the four sections with every key, and tells bad values
/// with their key and line: a rate that does not parse, a zero window, a tarpit that
/// would never start, a DNS list that does not parse, a threshold that lists everyone,
/// a retry window shorter than the delay; then a state file in a missing directory.
#[test]
fn check_config_tells_bad_rate_greylist_and_dnsbl_values() {
    let dir = tempfile::tempdir().unwrap();
    let good = config(
        dir.path(),
        "127.0.0.1:0",
        "",
        &format!(
            "[rate_limits]\nconnections_per_ip = \"30/1m\"\nmessages_per_ip = {{ max = 600, per = \"1h\", mode = \"tag\" }}\n\
             recipients_per_ip = \"off\"\nmessages_per_sender_domain = 0\nrecipients_per_sender_domain = \"1000/1d\"\n\
             messages_per_login = \"500/1h\"\nrecipients_per_login = \"2000/1h\"\n\
             exempt_networks = [\"127.0.0.0/8\"]\nexempt_logins = [\"news@mx.test\"]\nmax_tracked = 1000\n\
             [rate_limits.failed_rcpts]\ntarpit_after = 10\ndisconnect_after = 30\nwindow = \"1h\"\n\
             tarpit_step = \"1s\"\ntarpit_max = \"10s\"\nmode = \"enforce\"\n\
             [rate_limits.failed_logins]\nmax_failures = 10\nwindow = \"15m\"\nlockout = \"30m\"\nmode = \"tag\"\n\
             [greylist]\nmode = \"enforce\"\ndelay = \"5m\"\nretry_window = \"2d\"\nlifetime = \"35d\"\n\
             auto_allowlist_after = 5\nallowlist = [\"192.0.2.0/24\"]\nstate_file = \"{}/grey.state\"\n\
             save_interval = \"1m\"\nmax_entries = 1000\n\
             [dnsbl]\nmode = \"enforce\"\nthreshold = 3\nlists = [\"zen.spamhaus.org=127.0.0.[2..11]*3\", \"sender:dbl.spamhaus.org\", \"list.dnswl.org=127.0.[0..255].[1..3]*-5\"]\n\
             [reverse_dns]\nmode = \"enforce\"\nrequire = \"confirmed\"\n",
            dir.path().display()
        ),
    );
    assert_config_ok(&good);

    let bad = config(
        dir.path(),
        "127.0.0.1:0",
        "",
        "[rate_limits]\nconnections_per_ip = \"60 a minute\"\n\
         [rate_limits.failed_rcpts]\ntarpit_after = 40\ndisconnect_after = 30\nwindow = 0\n\
         [greylist]\nmode = \"enforce\"\ndelay = \"1h\"\nretry_window = \"30m\"\n\
         [dnsbl]\nthreshold = 0\nlists = [\"zen..test\"]\n\
         [reverse_dns]\nrequire = \"name\"\n",
    );
    assert_config_refused(
        &bad,
        &[
            "line 17: [rate_limits] connections_per_ip: \"60 a minute\": write how many per how long",
            "line 28: [dnsbl] lists: \"zen..test\": DNS list \"zen..test\": the zone is not a domain name",
            "line 30: [reverse_dns] require: unknown variant `name`",
        ],
    );
    // The sections that read are checked across their keys.
    let bad = config(
        dir.path(),
        "127.0.0.1:0",
        "",
        "[rate_limits.failed_rcpts]\ntarpit_after = 40\ndisconnect_after = 30\nwindow = 0\n\
         [greylist]\nmode = \"enforce\"\ndelay = \"1h\"\nretry_window = \"30m\"\n\
         [dnsbl]\nthreshold = 0\n",
    );
    assert_config_refused(
        &bad,
        &[
            "line 17: [rate_limits.failed_rcpts] tarpit_after (40) is more than disconnect_after (30)",
            "line 19: [rate_limits.failed_rcpts] window: must be more than 0",
            "line 23: [greylist] retry_window: must be longer than delay (1h)",
            "line 25: [dnsbl] threshold: 0 would list every client",
        ],
    );
    // A zero window of a rate is refused as the file is read.
    let bad = config(
        dir.path(),
        "127.0.0.1:0",
        "",
        "[rate_limits]\nmessages_per_login = { max = 10, per = 0 }\n",
    );
    let stderr = assert_config_refused(&bad, &[]);
    assert!(
        stderr.contains("line 17: [rate_limits] messages_per_login: 10 per 0 seconds: the time must be more than 0"),
        "{stderr}"
    );
    // A state file in a directory that does not exist: told by check-config, and
    // `mta serve` does not start.
    let bad = config(
        dir.path(),
        "127.0.0.1:0",
        "",
        "[greylist]\nmode = \"enforce\"\nstate_file = \"/nonexistent/mta/greylist.state\"\n",
    );
    let stderr = assert_config_refused(&bad, &[]);
    assert!(
        stderr.contains("line 18: [greylist] state_file /nonexistent/mta/greylist.state: the directory /nonexistent/mta does not exist"),
        "{stderr}"
    );
    let (code, _, stderr) = run_with("serve", &bad);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/mta does not exist"),
        "{stderr}"
    );
}

/// `[reverse_dns]` in enforce mode, behind a PROXY protocol listener (the clients are
/// 192.0.2.x, whose PTR and address records dnsmasq serves): a client with a confirmed
/// name has it in `Received:`; one without a name has its recipient deferred with
/// `450 4.7.25`. Counted.
#[test]
fn reverse_dns_names_the_client_and_defers_a_nameless_one() {
    let Some(dns) = dnsmasq(&[
        "--ptr-record=44.2.0.192.in-addr.arpa,mail.example.test",
        "--host-record=mail.example.test,192.0.2.44",
    ]) else {
        return;
    };
    let setup = Setup::new();
    let cfg = setup.config(
        "127.0.0.1:0",
        "proxy_protocol = { load_balancers = [\"127.0.0.1/32\"] }\n",
        &format!(
            "[dns]\nnameservers = [\"{}\"]\n[reverse_dns]\nmode = \"enforce\"\n",
            dns.address
        ),
    );
    let (child, addr) = serve(&cfg);
    let session = |client: &str| {
        let mut c = connect_from("127.0.0.1", &addr);
        c.send(&format!("PROXY TCP4 {client} 127.0.0.1 50123 25\r\n"));
        assert!(c.reply().unwrap().starts_with("220 "));
        c.mail_from("mail.example.test", "ann@example.test");
        let reply = c.cmd("RCPT TO:<you@mx.test>");
        (reply, c)
    };
    let (named, mut c) = session("192.0.2.44");
    assert!(named.starts_with("250"), "{named}");
    assert!(c.message("named").starts_with("250"));
    c.cmd("QUIT");
    let files = maildir_files(setup.dir.path(), "you", 1);
    assert!(
        files[0].contains("Received: from mail.example.test (mail.example.test [192.0.2.44])"),
        "{}",
        files[0]
    );
    let (nameless, mut c) = session("192.0.2.45");
    assert_eq!(
        nameless,
        "450 4.7.25 Client host rejected: cannot find your hostname, [192.0.2.45]\r\n"
    );
    c.cmd("QUIT");
    setup.assert_metrics([
        ("mta_rdns_results_total{result=\"confirmed\"}", 1.0),
        ("mta_rdns_results_total{result=\"missing\"}", 1.0),
        ("mta_rdns_results_total{result=\"temperror\"}", 0.0),
        ("mta_rdns_refused_total", 1.0),
    ]);
    terminate(child);
}

/// Mail handed in on this machine (`mta sendmail`, through the running server's control
/// socket) is not rate limited, whatever the per-login limit: cron jobs and scripts are
/// not network clients.
#[test]
fn sendmail_is_not_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "127.0.0.1:0",
        "",
        "[rate_limits]\nmessages_per_login = \"1/1h\"\nrecipients_per_login = \"1/1h\"\n\
         exempt_networks = []\n",
    );
    let (child, _) = serve(&cfg);
    for i in 0..3 {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf 'Subject: cron {i}\\n\\nx\\n' | {} sendmail -C {} you@mx.test me@mx.test",
                env!("CARGO_BIN_EXE_mta"),
                cfg.display()
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    assert_eq!(maildir_files(dir.path(), "you", 3).len(), 3);
    terminate(child);
}
