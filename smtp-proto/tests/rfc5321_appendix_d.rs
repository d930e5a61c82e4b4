//! The scenarios of RFC 5321 appendix D, played against our server session (our reply
//! codes must match the RFC's) and against our client session (given the RFC's server
//! replies, our client must send the RFC's commands).

// Test code: a panic is a failed test, and printing is how a test reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::sync::Arc;

use smtp_proto::{
    ClientConfig, ClientEvent, ClientSession, Command, EnhancedStatus, Event, ForwardPath,
    HeloName, MailParameters, MailTransaction, RcptParameters, Reply, ReplyCode, ReplyParser,
    ReversePath, ServerConfig, ServerSession,
};

/// A scenario as in the RFC: `C:` lines the client sends, `S:` lines the server sends.
struct Scenario {
    name: &'static str,
    lines: &'static [&'static str],
}

const D1_TYPICAL: Scenario = Scenario {
    name: "D.1 typical transaction",
    lines: &[
        "S: 220 foo.com Simple Mail Transfer Service Ready",
        "C: EHLO bar.com",
        "S: 250-foo.com greets bar.com",
        "S: 250-8BITMIME",
        "S: 250-SIZE",
        "S: 250-DSN",
        "S: 250 HELP",
        "C: MAIL FROM:<Smith@bar.com>",
        "S: 250 OK",
        "C: RCPT TO:<Jones@foo.com>",
        "S: 250 OK",
        "C: RCPT TO:<Green@foo.com>",
        "S: 550 No such user here",
        "C: RCPT TO:<Brown@foo.com>",
        "S: 250 OK",
        "C: DATA",
        "S: 354 Start mail input; end with <CRLF>.<CRLF>",
        "C: Blah blah blah...",
        "C: ...etc. etc. etc.",
        "C: .",
        "S: 250 OK",
        "C: QUIT",
        "S: 221 foo.com Service closing transmission channel",
    ],
};

const D2_ABORTED: Scenario = Scenario {
    name: "D.2 aborted transaction",
    lines: &[
        "S: 220 foo.com Simple Mail Transfer Service Ready",
        "C: EHLO bar.com",
        "S: 250-foo.com greets bar.com",
        "S: 250-8BITMIME",
        "S: 250-SIZE",
        "S: 250-DSN",
        "S: 250 HELP",
        "C: MAIL FROM:<Smith@bar.com>",
        "S: 250 OK",
        "C: RCPT TO:<Jones@foo.com>",
        "S: 250 OK",
        "C: RCPT TO:<Green@foo.com>",
        "S: 550 No such user here",
        "C: RSET",
        "S: 250 OK",
        "C: QUIT",
        "S: 221 foo.com Service closing transmission channel",
    ],
};

const D3_RELAYED: Scenario = Scenario {
    name: "D.3 relayed mail, step 1",
    lines: &[
        "S: 220 foo.com Simple Mail Transfer Service Ready",
        "C: EHLO bar.com",
        "S: 250-foo.com greets bar.com",
        "S: 250-8BITMIME",
        "S: 250-SIZE",
        "S: 250-DSN",
        "S: 250 HELP",
        "C: MAIL FROM:<JQP@bar.com>",
        "S: 250 OK",
        "C: RCPT TO:<Jones@XYZ.COM>",
        "S: 250 OK",
        "C: DATA",
        "S: 354 Start mail input; end with <CRLF>.<CRLF>",
        "C: Date: Thu, 21 May 1998 05:33:29 -0700",
        "C: From: John Q. Public <JQP@bar.com>",
        "C: Subject: The Next Meeting of the Board",
        "C: To: Jones@xyz.com",
        "C: ",
        "C: Bill:",
        "C: The next meeting of the board of directors will be",
        "C: on Tuesday.",
        "C: John.",
        "C: .",
        "S: 250 OK",
        "C: QUIT",
        "S: 221 foo.com Service closing transmission channel",
    ],
};

const D4_VERIFY: Scenario = Scenario {
    name: "D.4 verifying and sending",
    lines: &[
        "S: 220 foo.com Simple Mail Transfer Service Ready",
        "C: EHLO bar.com",
        "S: 250-foo.com greets bar.com",
        "S: 250-8BITMIME",
        "S: 250-SIZE",
        "S: 250-DSN",
        "S: 250-VRFY",
        "S: 250 HELP",
        "C: VRFY Crispin",
        "S: 250 Mark Crispin <Admin.MRC@foo.com>",
        "C: MAIL FROM:<EMBBS@bar.com>",
        "S: 250 OK",
        "C: RCPT TO:<Admin.MRC@foo.com>",
        "S: 250 OK",
        "C: DATA",
        "S: 354 Start mail input; end with <CRLF>.<CRLF>",
        "C: Blah blah blah...",
        "C: ...etc. etc. etc.",
        "C: .",
        "S: 250 OK",
        "C: QUIT",
        "S: 221 foo.com Service closing transmission channel",
    ],
};

const ALL: [Scenario; 4] = [D1_TYPICAL, D2_ABORTED, D3_RELAYED, D4_VERIFY];

fn client_bytes(s: &Scenario) -> Vec<u8> {
    s.lines
        .iter()
        .filter_map(|l| l.strip_prefix("C: "))
        .flat_map(|l| [l.as_bytes(), b"\r\n"].concat())
        .collect()
}

fn server_bytes(s: &Scenario) -> Vec<u8> {
    s.lines
        .iter()
        .filter_map(|l| l.strip_prefix("S: "))
        .flat_map(|l| [l.as_bytes(), b"\r\n"].concat())
        .collect()
}

fn codes(bytes: &[u8]) -> Vec<u16> {
    let mut parser = ReplyParser::default();
    parser.push(bytes);
    std::iter::from_fn(|| parser.next_reply())
        .map(|r| r.unwrap().code().as_u16())
        .collect()
}

/// Our server answers the RFC's client with the RFC's codes (VRFY aside: we answer 252,
/// "cannot verify", which RFC 5321 §3.5.3 allows and which leaks no user list).
#[test]
fn our_server_gives_the_rfc_codes() {
    for scenario in &ALL {
        let config = ServerConfig {
            hostname: "foo.com".into(),
            ..ServerConfig::default()
        };
        let mut session = ServerSession::new(Arc::new(config));
        let mut messages = Vec::new();
        session.receive(&client_bytes(scenario));
        while let Some(event) = session.poll_event() {
            match event {
                Event::Rcpt {
                    to: ForwardPath::Mailbox(m),
                    ..
                } if m.local_part() == "Green" => {
                    session.respond(Reply::new(
                        ReplyCode::MAILBOX_UNAVAILABLE,
                        EnhancedStatus::BAD_DESTINATION_MAILBOX,
                        "No such user here",
                    ));
                }
                Event::Message { body, envelope } => {
                    messages.push((envelope, body));
                    session.accept();
                }
                _ => session.accept(),
            }
        }
        let mut expected = codes(&server_bytes(scenario));
        if scenario.name.starts_with("D.4") {
            // Replies: 220, 250 to EHLO, then the one to VRFY.
            expected[2] = 252;
        }
        assert_eq!(
            codes(session.pending_output()),
            expected,
            "{}",
            scenario.name
        );
        assert!(session.is_closed(), "{}", scenario.name);
        if scenario.name.starts_with("D.3") {
            let (envelope, body) = &messages[0];
            assert_eq!(envelope.recipients[0].to.to_string(), "<Jones@XYZ.COM>");
            assert!(body.starts_with(b"Date: Thu, 21 May 1998 05:33:29 -0700\r\n"));
            assert!(body.ends_with(b"John.\r\n"));
        }
    }
}

/// Our client, given the RFC's server replies, sends the RFC's commands.
#[test]
fn our_client_sends_the_rfc_commands() {
    for scenario in [&D1_TYPICAL, &D3_RELAYED] {
        let client_lines: Vec<&str> = scenario
            .lines
            .iter()
            .filter_map(|l| l.strip_prefix("C: "))
            .collect();
        let data_start = client_lines.iter().position(|l| *l == "DATA").unwrap() + 1;
        let body_lines = &client_lines[data_start..client_lines.len() - 2];
        // The content as the receiving server stores it: one leading dot removed
        // (RFC 5321 §4.5.2), which our client must put back.
        let body: String = body_lines
            .iter()
            .map(|l| format!("{}\r\n", l.strip_prefix('.').unwrap_or(l)))
            .collect();
        let recipients: Vec<(ForwardPath, RcptParameters)> = client_lines
            .iter()
            .filter_map(|l| l.strip_prefix("RCPT TO:"))
            .map(|p| (ForwardPath::parse(p).unwrap(), RcptParameters::default()))
            .collect();
        let from = client_lines
            .iter()
            .find_map(|l| l.strip_prefix("MAIL FROM:"))
            .unwrap();

        let mut client = ClientSession::new(ClientConfig::default());
        let mut sent = Vec::new();
        let server = server_bytes(scenario);
        // The RFC's server does not offer PIPELINING: one reply at a time.
        let mut parser = ReplyParser::default();
        parser.push(&server);
        while let Some(reply) = parser.next_reply() {
            client.receive(&reply.unwrap().to_bytes());
            while let Some(event) = client.poll_event() {
                match event.unwrap() {
                    ClientEvent::Greeting(_) => client.ehlo(HeloName::parse("bar.com").unwrap()),
                    ClientEvent::Reply { verb: "EHLO", .. } => {
                        client.start_transaction(MailTransaction {
                            from: ReversePath::parse(from).unwrap(),
                            params: MailParameters::default(),
                            recipients: recipients.clone(),
                        })
                    }
                    ClientEvent::ReadyForData => client.send_body(body.as_bytes()),
                    ClientEvent::TransactionComplete(result) => {
                        if scenario.name.starts_with("D.1") {
                            let codes: Vec<u16> = result
                                .recipients
                                .iter()
                                .map(|r| r.code().as_u16())
                                .collect();
                            assert_eq!(codes, [250, 550, 250]);
                        }
                        client.send(Command::Quit);
                    }
                    _ => {}
                }
            }
            sent.extend_from_slice(client.pending_output());
            client.consume_output(client.pending_output().len());
        }
        let expected = String::from_utf8(client_bytes(scenario)).unwrap();
        assert_eq!(
            String::from_utf8(sent).unwrap(),
            expected,
            "{}",
            scenario.name
        );
    }
}
