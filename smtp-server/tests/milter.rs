//! The milter client against real milters started by each test (OpenDKIM, clamav-milter
//! with clamd), a scripted milter for the modifications, and milters that are down or
//! never answer (the default action, the timeouts).
//!
//! A test whose daemon is not installed skips with a message, except under `CI=true`,
//! where `.ci/deps/milter.sh` installs it and its absence is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smtp_client::testing::{RawClient, code_of};
use smtp_server::filters::milter::protocol::{Actions, Response, Steps};
use smtp_server::filters::milter::{DefaultAction, Milter, MilterSettings};
use smtp_server::{DataRequest, Next, Stages, filter_async, from_fn};
use support::{Stop, relay_for_loopback, sink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the sink stored: the message, the sender and the recipients.
#[derive(Clone, Debug)]
struct Stored {
    message: Vec<u8>,
    from: String,
    to: Vec<String>,
}

impl Stored {
    fn of(req: DataRequest) -> Self {
        Self {
            message: req.message(),
            from: req.envelope.from.to_string(),
            to: req
                .envelope
                .recipients
                .iter()
                .map(|r| r.to.to_string())
                .collect(),
        }
    }
}

type Store = support::Kept<Stored>;

/// A server on a relay listener that relays for loopback, with `milter` at every stage
/// and a data filter that adds `X-Before: 1` before the milter sees the message.
async fn start(milter: Milter, store: Store) -> (SocketAddr, Stop) {
    start_all(vec![milter], store).await
}

/// [`start`] with several milters, each at every stage (the first added runs last).
async fn start_all(milters: Vec<Milter>, store: Store) -> (SocketAddr, Stop) {
    let before = from_fn(|mut req: DataRequest, next: Next<DataRequest>| async move {
        req.prepend_header("X-Before", "1");
        next.run(req).await
    });
    let mut stages = relay_for_loopback(Stages::new(sink(&store, Stored::of)));
    for milter in milters {
        stages = stages
            .connect_layer(filter_async(milter.clone()))
            .ehlo_layer(filter_async(milter.clone()))
            .mail_layer(filter_async(milter.clone()))
            .rcpt_layer(filter_async(milter.clone()))
            .data_layer(filter_async(milter));
    }
    let stages = stages.data_layer(before);
    let server = support::start(support::relay_config("mx.milter.test"), stages).await;
    (server.addr(), server.stop)
}

fn settings(address: String) -> MilterSettings {
    MilterSettings {
        name: "test".into(),
        address,
        hostname: "mx.milter.test".into(),
        command_timeout: Duration::from_secs(10),
        end_of_message_timeout: Duration::from_secs(30),
        ..MilterSettings::default()
    }
}

/// Sends one message on an open session; the reply to the end of DATA.
async fn send_message(c: &mut RawClient, from: &str, to: &str, content: &str) -> String {
    assert_eq!(c.code(&format!("MAIL FROM:<{from}>")).await, "250 2.1.0");
    assert_eq!(c.code(&format!("RCPT TO:<{to}>")).await, "250 2.1.5");
    assert_eq!(c.code("DATA").await, "354");
    c.send(content.as_bytes()).await;
    c.send(b".\r\n").await;
    code_of(&c.reply().await)
}

/// A daemon started by a test, killed when dropped.
struct Daemon {
    child: Child,
    name: &'static str,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Starts `program args` and waits until `socket` accepts connections.
    async fn start(name: &'static str, program: &Path, args: &[&str], socket: &Path) -> Self {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut daemon = Self { child, name };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if tokio::net::UnixStream::connect(socket).await.is_ok() {
                return daemon;
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("{} exited before listening: {status}", daemon.name);
            }
            assert!(
                Instant::now() < deadline,
                "{} does not listen on {}",
                daemon.name,
                socket.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A daemon's program, in PATH or the sbin directories; `None` (and a message) when
/// missing, a failure under `CI=true`.
fn program(name: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let found = dirs
        .into_iter()
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} is required under CI=true (.ci/deps/milter.sh installs it)"
        );
        eprintln!("skipping: {name} not found (bash .ci/deps/milter.sh installs it)");
    }
    found
}

const DKIM_MESSAGE: &str = "From: Alice <alice@dkim.test>\r\n\
To: Bob <bob@example.test>\r\n\
Subject: signed by a milter\r\n\
Date: Sat, 01 Mar 2025 10:00:00 +0000\r\n\
Message-ID: <m1@dkim.test>\r\n\
\r\n\
Hello Bob,\r\n\
\r\n\
this message is signed by OpenDKIM.\r\n";

/// OpenDKIM signs a message from an internal host (127.0.0.1): the stored message has
/// its DKIM-Signature, and Debian's dkimpy verifies it with the generated key.
#[tokio::test]
async fn opendkim_signs_and_the_signature_verifies() {
    let (Some(opendkim), Some(genkey)) = (program("opendkim"), program("opendkim-genkey")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let made = Command::new(genkey)
        .args(["-b", "2048", "-d", "dkim.test", "-s", "sel", "-D"])
        .arg(d)
        .status()
        .unwrap();
    assert!(made.success(), "opendkim-genkey failed");
    let socket = d.join("opendkim.sock");
    let conf = d.join("opendkim.conf");
    std::fs::write(
        &conf,
        format!(
            "Syslog no\nMode sv\nDomain dkim.test\nSelector sel\nKeyFile {key}\n\
             Socket local:{socket}\nInternalHosts 127.0.0.1\nRequireSafeKeys no\n\
             Canonicalization simple/simple\nUMask 000\n",
            key = d.join("sel.private").display(),
            socket = socket.display()
        ),
    )
    .unwrap();
    let conf = conf.to_str().unwrap();
    let _daemon = Daemon::start("opendkim", &opendkim, &["-f", "-x", conf], &socket).await;

    let store = Store::default();
    let milter = Milter::new(settings(format!("unix:{}", socket.display()))).unwrap();
    let (addr, _stop) = start(milter, Arc::clone(&store)).await;
    let mut c = RawClient::connect(addr).await;
    assert_eq!(code_of(&c.greeting), "220");
    c.cmd("EHLO client.dkim.test").await;
    let reply = send_message(&mut c, "alice@dkim.test", "bob@example.test", DKIM_MESSAGE).await;
    assert_eq!(reply, "250 2.0.0");
    c.send(b"QUIT\r\n").await;

    let stored = store.lock().unwrap()[0].clone();
    let text = String::from_utf8_lossy(&stored.message).into_owned();
    assert!(text.contains("DKIM-Signature: "), "no signature:\n{text}");
    assert!(text.contains("d=dkim.test"), "{text}");
    assert!(
        text.contains("X-Before: 1\r\n"),
        "earlier filters' fields kept: {text}"
    );
    assert!(text.ends_with(&DKIM_MESSAGE[DKIM_MESSAGE.find("\r\n\r\n").unwrap()..]));
    assert!(
        !text.replace("\r\n", "").contains('\n') && !text.replace("\r\n", "").contains('\r'),
        "CRLF line endings only"
    );

    let python = Path::new("/usr/bin/python3");
    let has_dkim = Command::new(python)
        .args(["-c", "import dkim"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_dkim {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3-dkim is required under CI=true"
        );
        eprintln!("skipping the verification: python3-dkim not installed");
        return;
    }
    let message = d.join("signed.eml");
    std::fs::write(&message, &stored.message).unwrap();
    let verify = r#"
import re, sys, dkim
message = open(sys.argv[1], 'rb').read()
record = ''.join(re.findall(r'"([^"]*)"', open(sys.argv[2]).read())).encode()
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    return record if name.rstrip('.') == 'sel._domainkey.dkim.test' else None
sys.exit(0 if dkim.verify(message, dnsfunc=dnsfunc) else 1)
"#;
    let verified = Command::new(python)
        .args(["-c", verify])
        .arg(&message)
        .arg(d.join("sel.txt"))
        .status()
        .unwrap();
    assert!(
        verified.success(),
        "dkimpy does not verify the signature:\n{text}"
    );
}

/// clamav-milter with clamd and a signature database of our own (a one-line `.ndb`
/// matching the EICAR test string): the EICAR message is refused with a 5yz at the end
/// of DATA, a clean one passes with clamav-milter's header fields, on one connection.
#[tokio::test]
async fn clamav_milter_refuses_eicar_and_passes_clean_mail() {
    let (Some(clamd), Some(clamav_milter)) = (program("clamd"), program("clamav-milter")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db = d.join("db");
    std::fs::create_dir(&db).unwrap();
    let hex: String = b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE"
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(db.join("own.ndb"), format!("Test.Own.EICAR:0:*:{hex}\n")).unwrap();
    let clamd_socket = d.join("clamd.sock");
    let clamd_conf = d.join("clamd.conf");
    std::fs::write(
        &clamd_conf,
        format!(
            "LocalSocket {}\nForeground yes\nDatabaseDirectory {}\nLogFile {}\nBytecode no\n",
            clamd_socket.display(),
            db.display(),
            d.join("clamd.log").display()
        ),
    )
    .unwrap();
    let _clamd = Daemon::start(
        "clamd",
        &clamd,
        &["-c", clamd_conf.to_str().unwrap()],
        &clamd_socket,
    )
    .await;
    let socket = d.join("milter.sock");
    let conf = d.join("clamav-milter.conf");
    std::fs::write(
        &conf,
        format!(
            "MilterSocket unix:{}\nClamdSocket unix:{}\nForeground yes\nOnInfected Reject\n\
             OnClean Accept\nOnFail Defer\nAddHeader Replace\nLogFile {}\n",
            socket.display(),
            clamd_socket.display(),
            d.join("milter.log").display()
        ),
    )
    .unwrap();
    let _milter = Daemon::start(
        "clamav-milter",
        &clamav_milter,
        &["-c", conf.to_str().unwrap()],
        &socket,
    )
    .await;

    let store = Store::default();
    let milter = Milter::new(settings(format!("unix:{}", socket.display()))).unwrap();
    let (addr, _stop) = start(milter, Arc::clone(&store)).await;
    let mut c = RawClient::connect(addr).await;
    c.cmd("EHLO client.test").await;
    let clean = "From: a@example.test\r\nSubject: clean\r\n\r\nNothing to see.\r\n";
    let reply = send_message(&mut c, "a@example.test", "b@example.test", clean).await;
    assert_eq!(reply, "250 2.0.0");
    let eicar = "From: a@example.test\r\nSubject: test\r\n\r\n\
                 X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*\r\n";
    let reply = send_message(&mut c, "a@example.test", "b@example.test", eicar).await;
    assert!(reply.starts_with('5'), "EICAR passed: {reply}");
    // The connection goes on: the next message is asked about anew.
    let reply = send_message(&mut c, "a@example.test", "c@example.test", clean).await;
    assert_eq!(reply, "250 2.0.0");
    c.send(b"QUIT\r\n").await;

    let stored = store.lock().unwrap().clone();
    assert_eq!(stored.len(), 2, "only the clean messages are stored");
    let text = String::from_utf8_lossy(&stored[0].message).into_owned();
    assert!(text.contains("X-Virus-Status: Clean\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nNothing to see.\r\n"), "{text}");
}

/// A milter address where nothing listens: with `Tempfail` (the default) the client
/// gets `451 4.7.1` at MAIL FROM (the milter is first asked at connect, and a refusal
/// there is given at MAIL, as Postfix does); with `Accept` the mail is delivered.
#[tokio::test]
async fn a_milter_that_is_down_gets_the_default_action() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = unused.local_addr().unwrap().port();
    drop(unused);
    for (action, mail, data) in [
        (DefaultAction::Tempfail, "451 4.7.1", None),
        (DefaultAction::Accept, "250 2.1.0", Some("250 2.0.0")),
    ] {
        let store = Store::default();
        let milter = Milter::new(MilterSettings {
            default_action: action,
            connect_timeout: Duration::from_secs(2),
            ..settings(format!("inet:127.0.0.1:{port}"))
        })
        .unwrap();
        let (addr, _stop) = start(milter, Arc::clone(&store)).await;
        let mut c = RawClient::connect(addr).await;
        assert_eq!(code_of(&c.greeting), "220");
        assert_eq!(c.code("EHLO client.test").await, "250");
        assert_eq!(
            c.code("MAIL FROM:<a@example.test>").await,
            mail,
            "{action:?}"
        );
        if let Some(data) = data {
            assert_eq!(c.code("RCPT TO:<b@example.test>").await, "250 2.1.5");
            assert_eq!(c.code("DATA").await, "354");
            c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n").await;
            assert_eq!(code_of(&c.reply().await), data);
        }
        assert_eq!(store.lock().unwrap().len(), usize::from(data.is_some()));
    }
    // The same for a Unix socket that is not there.
    let store = Store::default();
    let milter = Milter::new(settings("unix:/nonexistent/milter.sock".into())).unwrap();
    let (addr, _stop) = start(milter, store).await;
    let mut c = RawClient::connect(addr).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.code("MAIL FROM:<a@example.test>").await, "451 4.7.1");
}

/// A milter that accepts the connection and never answers: bounded by the command
/// timeout, then the default action.
#[tokio::test]
async fn a_milter_that_never_answers_times_out() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let milter = Milter::new(MilterSettings {
        command_timeout: Duration::from_secs(1),
        ..settings(format!("inet:127.0.0.1:{port}"))
    })
    .unwrap();
    let (addr, _stop) = start(milter, Store::default()).await;
    let started = Instant::now();
    let mut c = RawClient::connect(addr).await;
    assert_eq!(code_of(&c.greeting), "220");
    c.cmd("EHLO client.test").await;
    assert_eq!(c.code("MAIL FROM:<a@example.test>").await, "451 4.7.1");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "took {took:?}"
    );
}

/// The commands a scripted milter got: command letter and data.
type Seen = Arc<Mutex<Vec<(u8, Vec<u8>)>>>;

/// What a scripted milter answers a command (letter, data) other than negotiation,
/// macros, abort and quit.
type Script = Arc<dyn Fn(u8, &[u8]) -> Vec<Response> + Send + Sync>;

/// A scripted milter answering end of body with `eob`, every other command with
/// continue.
async fn scripted_milter(eob: Vec<Response>, seen: Seen) -> u16 {
    let script: Script = Arc::new(move |command, _| match command {
        b'E' => eob.clone(),
        _ => vec![Response::Continue],
    });
    script_milter(script, seen).await
}

/// A milter answering as `script` says; records the commands it got.
async fn script_milter(script: Script, seen: Seen) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let script = Arc::clone(&script);
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                loop {
                    let mut len = [0u8; 4];
                    if socket.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut packet = vec![0u8; u32::from_be_bytes(len) as usize];
                    if socket.read_exact(&mut packet).await.is_err() {
                        return;
                    }
                    let command = packet[0];
                    seen.lock().unwrap().push((command, packet[1..].to_vec()));
                    let mut out = Vec::new();
                    match command {
                        b'O' => Response::Negotiate {
                            version: 6,
                            actions: Actions::ALL,
                            steps: Steps::HEADER_LEADING_SPACE,
                            macros: vec![],
                        }
                        .encode(&mut out),
                        b'D' | b'A' => {}
                        b'Q' => return,
                        _ => {
                            for r in script(command, &packet[1..]) {
                                r.encode(&mut out);
                            }
                        }
                    }
                    if socket.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Every modification of end of body lands in what is stored: header fields added,
/// inserted, changed and deleted, the body replaced, recipients added and deleted, the
/// sender changed, quarantine.
#[tokio::test]
async fn modifications_are_applied_to_the_stored_message() {
    let seen = Arc::default();
    let field = |name: &str, value: &str| (name.to_owned(), value.as_bytes().to_vec());
    let (n1, v1) = field("X-Added", " yes");
    let (n2, v2) = field("X-First", " top\n\tfolded");
    let (n3, v3) = field("Subject", " changed");
    let (n4, v4) = field("X-Drop", "");
    let eob = vec![
        Response::Progress,
        Response::AddHeader {
            name: n1,
            value: v1,
        },
        Response::InsertHeader {
            index: 0,
            name: n2,
            value: v2,
        },
        Response::ChangeHeader {
            index: 1,
            name: n3,
            value: v3,
        },
        Response::ChangeHeader {
            index: 1,
            name: n4,
            value: v4,
        },
        Response::ReplaceBody(b"new body\nline two\n".to_vec()),
        Response::AddRecipient("<added@example.test>".into()),
        Response::AddRecipientArgs {
            recipient: "args@example.test".into(),
            args: "NOTIFY=NEVER".into(),
        },
        Response::DeleteRecipient("<b@example.test>".into()),
        Response::ChangeFrom {
            sender: "<new-sender@example.test>".into(),
            args: None,
        },
        Response::Quarantine("looks odd".into()),
        Response::Continue,
    ];
    let port = scripted_milter(eob, Arc::clone(&seen)).await;
    let store = Store::default();
    let milter = Milter::new(settings(format!("inet:127.0.0.1:{port}"))).unwrap();
    let (addr, _stop) = start(milter, Arc::clone(&store)).await;
    let mut c = RawClient::connect(addr).await;
    c.cmd("EHLO client.test").await;
    let content = "Subject: original\r\nX-Drop: me\r\nTo: b@example.test\r\n\r\nold body\r\n";
    let reply = send_message(&mut c, "a@example.test", "b@example.test", content).await;
    assert_eq!(reply, "250 2.0.0");
    c.send(b"QUIT\r\n").await;

    let stored = store.lock().unwrap()[0].clone();
    assert_eq!(
        String::from_utf8_lossy(&stored.message),
        "X-Quarantine: milter test: looks odd\r\n\
         X-First: top\r\n\tfolded\r\n\
         X-Before: 1\r\n\
         Subject: changed\r\n\
         To: b@example.test\r\n\
         X-Added: yes\r\n\
         \r\n\
         new body\r\nline two\r\n"
    );
    assert_eq!(stored.from, "<new-sender@example.test>");
    assert_eq!(stored.to, ["<added@example.test>", "<args@example.test>"]);

    // What the milter saw, in order (macros left out).
    let seen = seen.lock().unwrap();
    let commands: String = seen
        .iter()
        .map(|(c, _)| char::from(*c))
        .filter(|c| *c != 'D' && *c != 'Q')
        .collect();
    assert_eq!(commands, "OCHMRTLLLLNBE");
    let headers: Vec<_> = seen
        .iter()
        .filter(|(c, _)| *c == b'L')
        .map(|(_, d)| d.clone())
        .collect();
    assert_eq!(
        headers[0], b"X-Before\0 1\0",
        "leading space kept as negotiated"
    );
    let connect = &seen.iter().find(|(c, _)| *c == b'C').unwrap().1;
    assert!(connect.starts_with(b"[127.0.0.1]\x004"), "{connect:?}");
    let macros: Vec<_> = seen
        .iter()
        .filter(|(c, _)| *c == b'D')
        .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
        .collect();
    assert!(
        macros[0].starts_with("Cj\0mx.milter.test\0{daemon_name}\0mta\0"),
        "{macros:?}"
    );
    assert!(
        macros
            .iter()
            .any(|m| m.contains("{mail_addr}\0a@example.test\0"))
    );
    assert!(
        macros
            .iter()
            .any(|m| m.contains("{rcpt_addr}\0b@example.test\0"))
    );
}

/// Discard: the client is told `250`, nothing is stored.
#[tokio::test]
async fn a_discarded_message_is_accepted_and_dropped() {
    let port = scripted_milter(vec![Response::Discard], Arc::default()).await;
    let store = Store::default();
    let milter = Milter::new(settings(format!("inet:127.0.0.1:{port}"))).unwrap();
    let (addr, _stop) = start(milter, Arc::clone(&store)).await;
    let mut c = RawClient::connect(addr).await;
    c.cmd("EHLO client.test").await;
    let reply = send_message(
        &mut c,
        "a@example.test",
        "b@example.test",
        "Subject: x\r\n\r\nx\r\n",
    )
    .await;
    assert_eq!(reply, "250 2.0.0");
    assert!(store.lock().unwrap().is_empty());
}

/// A reply code at RCPT refuses that recipient only; one at the end of DATA refuses
/// the message with the milter's reply.
#[tokio::test]
async fn reply_codes_refuse_a_recipient_or_the_message() {
    let script: Script = Arc::new(|command, data| {
        let reply =
            |text: &[u8]| smtp_server::filters::milter::protocol::parse_reply(text).unwrap();
        match command {
            b'R' if data.starts_with(b"<bad@") => {
                vec![
                    Response::Progress,
                    Response::Reply(reply(b"550 5.1.1 No such user")),
                ]
            }
            b'R' if data.starts_with(b"<later@") => vec![Response::Tempfail],
            b'E' => vec![Response::Reply(reply(b"554 5.7.1 Spam"))],
            _ => vec![Response::Continue],
        }
    });
    let port = script_milter(script, Seen::default()).await;
    let store = Store::default();
    let milter = Milter::new(settings(format!("inet:127.0.0.1:{port}"))).unwrap();
    let (addr, _stop) = start(milter, Arc::clone(&store)).await;
    let mut c = RawClient::connect(addr).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.code("MAIL FROM:<a@example.test>").await, "250 2.1.0");
    assert_eq!(c.code("RCPT TO:<bad@example.test>").await, "550 5.1.1");
    assert_eq!(c.code("RCPT TO:<later@example.test>").await, "451 4.7.1");
    assert_eq!(c.code("RCPT TO:<good@example.test>").await, "250 2.1.5");
    assert_eq!(c.code("DATA").await, "354");
    c.send(b"Subject: x\r\n\r\nbuy now\r\n.\r\n").await;
    let reply = c.reply().await;
    assert_eq!(reply.to_string(), "554 5.7.1 Spam");
    assert!(store.lock().unwrap().is_empty());
}

/// Two milters at once: each keeps its own connection and both change the message.
#[tokio::test]
async fn two_milters_each_have_their_connection() {
    let (seen_a, seen_b) = (Seen::default(), Seen::default());
    let add = |name: &str| {
        vec![
            Response::AddHeader {
                name: name.into(),
                value: b" 1".to_vec(),
            },
            Response::Continue,
        ]
    };
    let a = scripted_milter(add("X-A"), Arc::clone(&seen_a)).await;
    let b = scripted_milter(add("X-B"), Arc::clone(&seen_b)).await;
    let store = Store::default();
    let milters = vec![
        Milter::new(settings(format!("inet:127.0.0.1:{a}"))).unwrap(),
        Milter::new(settings(format!("inet:127.0.0.1:{b}"))).unwrap(),
    ];
    let (addr, _stop) = start_all(milters, Arc::clone(&store)).await;
    let mut c = RawClient::connect(addr).await;
    c.cmd("EHLO client.test").await;
    for _ in 0..2 {
        let reply = send_message(
            &mut c,
            "a@example.test",
            "b@example.test",
            "Subject: x\r\n\r\nx\r\n",
        )
        .await;
        assert_eq!(reply, "250 2.0.0");
    }
    c.send(b"QUIT\r\n").await;
    let stored = store.lock().unwrap().clone();
    assert_eq!(
        String::from_utf8_lossy(&stored[1].message),
        "X-Before: 1\r\nSubject: x\r\nX-B: 1\r\nX-A: 1\r\n\r\nx\r\n",
        "B (added last) runs first, A sees its field"
    );
    for seen in [seen_a, seen_b] {
        let commands: String = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(c, _)| char::from(*c))
            .filter(|c| *c != 'D' && *c != 'Q')
            .collect();
        assert!(commands.starts_with("OCHMRTL"), "{commands}");
        assert_eq!(
            commands.matches('O').count(),
            1,
            "one connection: {commands}"
        );
        assert_eq!(commands.matches('E').count(), 2, "{commands}");
    }
}
