//! Interop: Python's `smtplib`, a client nobody here wrote, sends through every
//! listener (plain relay, submission with STARTTLS and AUTH, implicit TLS with
//! SMTPUTF8), and the mail is checked in the Maildir.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use mta_tests::{DOMAIN, TestMta};
use smtp_server::ListenerMode::{Relay, Smtps, Submission};

fn python() -> Option<&'static str> {
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some("python3");
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("python3 is required under CI=true (.ci/run installs it)");
    }
    eprintln!("skipping: python3 not found");
    None
}

const SCRIPT: &str = r#"
import smtplib, ssl, sys
from email.message import EmailMessage
relay, submission, smtps, cafile, domain = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
host, relay = relay.split(":")[0], int(relay.split(":")[1])
ctx = ssl.create_default_context(cafile=cafile)

# 1. Port 25 style: no login, local recipient.
with smtplib.SMTP(host, relay, local_hostname="python.test") as s:
    code, caps = s.ehlo()
    assert code == 250 and s.has_extn("pipelining") and s.has_extn("starttls"), caps
    s.sendmail("py@remote.test", [f"bob@{domain}"], b"Subject: relay\r\n\r\nfrom smtplib\r\n")
    try:
        s.sendmail("py@remote.test", ["victim@elsewhere.test"], b"Subject: x\r\n\r\nx\r\n")
        raise SystemExit("relay was allowed")
    except smtplib.SMTPRecipientsRefused as e:
        code, text = e.recipients["victim@elsewhere.test"]
        assert code == 554 and text.startswith(b"5.7.1"), e.recipients

# 2. Submission: STARTTLS verified against our CA (the certificate names 127.0.0.1),
#    then AUTH, then a message.
with smtplib.SMTP(host, submission, local_hostname="python.test") as s:
    s.ehlo()
    try:
        s.login(f"alice@{domain}", "secret")
        raise SystemExit("login allowed in plaintext")
    except smtplib.SMTPNotSupportedError:
        pass
    s.starttls(context=ctx)
    s.ehlo()
    assert s.has_extn("auth") and not s.has_extn("starttls")
    try:
        s.login(f"alice@{domain}", "wrong")
        raise SystemExit("wrong password accepted")
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535, e
    s.login(f"alice@{domain}", "secret")
    msg = EmailMessage()
    msg["From"] = f"alice@{domain}"
    msg["To"] = f"carol@{domain}"
    msg["Subject"] = "submission"
    msg.set_content("sent with STARTTLS and AUTH\n.leading dot\n")
    s.send_message(msg)

# 3. Implicit TLS, SMTPUTF8 addresses and an 8-bit body.
with smtplib.SMTP_SSL(host, smtps, context=ctx) as s:
    s.ehlo("python.test")
    assert s.has_extn("smtputf8")
    s.login(f"alice@{domain}", "secret")
    body = "Subject: utf8\r\n\r\nna\u00efve caf\u00e9 \u5b6b\u5b50\r\n".encode("utf-8")
    s.sendmail(f"alice@{domain}", [f"\u5b6b\u5b50@{domain}"], body, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
print("ok")
"#;

/// Runs `python` with `args` (a script that prints `ok` when all its checks held).
async fn run_ok(python: &str, args: &[String]) {
    let output = tokio::process::Command::new(python)
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("ok"),
        "smtplib failed:\n{stdout}\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_sends_through_every_listener() {
    let Some(python) = python() else { return };
    let t = TestMta::start("").await;
    let ca = t.dir.path().join("ca.pem");
    std::fs::write(&ca, &t.pki.ca_pem).unwrap();
    let args = [
        "-c".to_owned(),
        SCRIPT.to_owned(),
        t.addr(Relay).to_string(),
        t.addr(Submission).port().to_string(),
        t.addr(Smtps).port().to_string(),
        ca.display().to_string(),
        DOMAIN.to_owned(),
    ];
    run_ok(python, &args).await;

    let bob = t.wait_for_mail("bob", 1).await;
    assert!(String::from_utf8_lossy(&bob[0]).ends_with("Subject: relay\n\nfrom smtplib\n"));
    let carol = String::from_utf8_lossy(&t.wait_for_mail("carol", 1).await[0]).into_owned();
    assert!(carol.contains("with ESMTPSA"), "{carol}");
    assert!(
        carol.contains("\n.leading dot\n"),
        "dot-stuffing undone: {carol}"
    );
    let utf8 = t.wait_for_mail("\u{5B6B}\u{5B50}", 1).await;
    assert!(
        utf8[0].ends_with("Subject: utf8\n\nna\u{ef}ve caf\u{e9} \u{5B6B}\u{5B50}\n".as_bytes()),
        "8-bit body byte-exact"
    );
}

/// Python's smtplib sees the session limits as RFC 5321 lets a server close: past
/// `max_junk_commands` a NOOP is answered and counted as an error, and at `max_errors`
/// the `421 4.7.0` follows; a session that outlives `max_session_duration` gets
/// `421 4.4.2` unasked. Each time the connection is then closed.
const LIMITS_SCRIPT: &str = r#"
import smtplib, sys, time
host, port = sys.argv[1].rsplit(":", 1)
def closed(s):
    try:
        s.getreply()
    except smtplib.SMTPServerDisconnected:
        return True
    return False
s = smtplib.SMTP(host, int(port), local_hostname="python.test")
codes = [s.noop()[0] for _ in range(4)]
assert codes == [250, 250, 250, 250], codes
code, text = s.getreply()
assert (code, text[:5]) == (421, b"4.7.0"), (code, text)
assert closed(s)
s = smtplib.SMTP(host, int(port), local_hostname="python.test")
s.ehlo()
time.sleep(1.5)
code, text = s.getreply()
assert (code, text[:5]) == (421, b"4.4.2"), (code, text)
assert closed(s)
print("ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_meets_the_session_limits() {
    let Some(python) = python() else { return };
    let t = TestMta::start(
        "[limits]\nmax_junk_commands = 3\nmax_errors = 1\nmax_session_duration = \"1s\"\n",
    )
    .await;
    run_ok(
        python,
        &[
            "-c".to_owned(),
            LIMITS_SCRIPT.to_owned(),
            t.addr(Relay).to_string(),
        ],
    )
    .await;
}

/// s-nail, a mail client nobody here wrote, logs in with `AUTH PLAIN` without an
/// initial response: it waits for `334 ` (RFC 4954 §4: "334" SP) before it sends the
/// credentials, and aborted on a bare `334`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s_nail_logs_in_with_auth_plain_and_auth_login() {
    let Some(s_nail) = mta_tests::tool("s-nail") else {
        return;
    };
    let t = TestMta::start("").await;
    let ca = t.dir.path().join("ca.pem");
    std::fs::write(&ca, &t.pki.ca_pem).unwrap();
    for (n, mechanism) in ["plain", "login"].into_iter().enumerate() {
        let port = t.addr(Submission).port();
        let mut command = tokio::process::Command::new(&s_nail);
        command
            .args(["-#", "-:/", "-Sv15-compat", "-Sttycharset=utf-8"])
            .arg(format!(
                "-Smta=smtp://alice%40{DOMAIN}:secret@localhost:{port}"
            ))
            .arg("-Snosave")
            .args(["-Ssmtp-use-starttls", &format!("-Ssmtp-auth={mechanism}")])
            .arg(format!("-Stls-ca-file={}", ca.display()))
            .args(["-Stls-ca-no-defaults", "-Shostname=client.test"])
            .args(["-r", &format!("alice@{DOMAIN}"), "-s", mechanism])
            .arg(format!("carol@{DOMAIN}"));
        let out = mta_tests::run_with_input(&mut command, b"sent by s-nail\n").await;
        assert!(
            out.status.success(),
            "s-nail with AUTH {mechanism}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mail = t.wait_for_mail("carol", n + 1).await;
        let text = String::from_utf8_lossy(&mail[n]).into_owned();
        assert!(text.contains(&format!("Subject: {mechanism}")), "{text}");
        assert!(text.contains("with ESMTPSA"), "{text}");
    }
}
