//! The text log of `mta serve` written to a file (the lean text layer): what an
//! operator greps for is on the line of each event, with its time and level.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{any_user_config, maildir_files, queued_id, serve_logging, smtp_send, terminate};

/// One message to two local users, logged at `info` to a file: the "message accepted"
/// line carries the session (id, peer, listener), the transaction (sender, recipients,
/// size, queue id) and the reply; each "delivery" line carries the queue id, the
/// recipient and the result. Every line starts with its UTC time and level, and the
/// time lies between the test's start and end.
#[test]
fn text_lines_carry_every_field_of_their_spans() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = any_user_config(dir.path());
    let log_path = dir.path().join("mta.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let before = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    let (child, addr) = serve_logging(&cfg, &[], "info", log.into());
    let message = "Subject: logged\r\n\r\nbody\r\n";
    let said = smtp_send(
        &addr,
        "me@mx.test",
        &["you@mx.test", "them@mx.test"],
        message,
    );
    let id = queued_id(&said);
    assert_eq!(maildir_files(dir.path(), "you", 1).len(), 1);
    assert_eq!(maildir_files(dir.path(), "them", 1).len(), 1);
    terminate(child);
    let after = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    let text = std::fs::read_to_string(&log_path).unwrap();

    for line in text.lines() {
        let (time, rest) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("no time: {line}"));
        assert_eq!(time.len(), before.len(), "{line}");
        assert!(
            before.as_str() <= time && time <= after.as_str(),
            "{before} <= {line} <= {after}"
        );
        assert!(
            [" INFO ", " WARN ", "ERROR "]
                .iter()
                .any(|level| rest.starts_with(level)),
            "{line}"
        );
        assert!(!line.contains('\x1b'), "no colours in a file: {line}");
    }

    let accepted = text
        .lines()
        .find(|l| l.contains(": message accepted "))
        .unwrap_or_else(|| panic!("no accepted line: {text}"));
    let (_, accepted) = accepted.split_once(' ').unwrap();
    let session = " INFO smtp.session{session_id=";
    assert!(accepted.starts_with(session), "{accepted}");
    let rest = &accepted[session.len()..];
    let (session_id, rest) = rest.split_once(' ').unwrap();
    assert!(session_id.parse::<u64>().is_ok(), "{accepted}");
    let rest = rest
        .strip_prefix("peer=127.0.0.1:")
        .unwrap_or_else(|| panic!("{accepted}"));
    let (port, rest) = rest.split_once(' ').unwrap();
    assert!(port.parse::<u16>().is_ok(), "{accepted}");
    let size = message.len();
    assert_eq!(
        rest,
        format!(
            "listener=\"relay\"}}:smtp.txn{{from=<me@mx.test> rcpts=2 size={size} \
             queue_id={id}}}: smtp_server::connection: message accepted \
             reply=250 2.0.0 Ok: queued as {id}"
        ),
        "{accepted}"
    );

    let mut delivered: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(": delivery "))
        .map(|l| l.split_once(' ').unwrap().1)
        .collect();
    delivered.sort();
    assert_eq!(delivered.len(), 2, "{text}");
    for (line, to) in delivered.iter().zip(["them@mx.test", "you@mx.test"]) {
        let expected = format!(
            " INFO queue.delivery{{queue_id={id}}}: mail_queue::queue: delivery to={to} \
             result=\"delivered\" detail="
        );
        assert!(line.starts_with(&expected), "{line}\nnot {expected}");
    }
    assert!(
        !text.contains("Subject: logged"),
        "no message content in logs"
    );
}

/// `RUST_LOG` by target (read by the static filter): the server's lines, not the
/// queue's.
#[test]
fn rust_log_by_target_picks_the_crates() {
    let text = one_message_logged("warn,smtp_server=info");
    assert!(text.contains(": message accepted "), "{text}");
    assert!(!text.contains(": delivery "), "{text}");
}

/// `RUST_LOG` by span (read by `EnvFilter`): the delivery span's lines, not the
/// session's.
#[test]
fn rust_log_by_span_picks_the_spans() {
    let text = one_message_logged("warn,[queue.delivery]=info");
    assert!(text.contains(": delivery "), "{text}");
    assert!(text.contains(" INFO queue.delivery{queue_id="), "{text}");
    assert!(!text.contains(": message accepted "), "{text}");
}

/// The text log of a server run with `rust_log` that received and delivered one
/// message.
fn one_message_logged(rust_log: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = any_user_config(dir.path());
    let log_path = dir.path().join("mta.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (child, addr) = serve_logging(&cfg, &[], rust_log, log.into());
    smtp_send(
        &addr,
        "me@mx.test",
        &["you@mx.test"],
        "Subject: logged\r\n\r\nbody\r\n",
    );
    assert_eq!(maildir_files(dir.path(), "you", 1).len(), 1);
    terminate(child);
    std::fs::read_to_string(&log_path).unwrap()
}
