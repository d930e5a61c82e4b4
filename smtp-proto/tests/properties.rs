//! Property tests: encode→parse round trips for commands and replies, and "any split of
//! the input gives the same events and the same output" for the session machines and
//! the DATA decoder.

// Test code: a panic is a failed test, and printing is how a test reports.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod support;

use proptest::prelude::*;
use smtp_proto::{
    Body, ClientConfig, ClientEvent, ClientSession, Command, DataDecoder, DataEncoder, Domain,
    EnhancedStatus, ForwardPath, HeloName, MailParameters, MailTransaction, Mailbox, Mechanism,
    Notify, OriginalRecipient, RcptParameters, Reply, ReplyCode, ReplyParser, Ret, ReversePath,
    SaslData, ServerConfig,
};
use support::Harness;

// ----- strategies -----

fn domain() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", 1..4).prop_map(|l| l.join("."))
}

fn local_part() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec("[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,8}", 1..3)
            .prop_map(|a| a.join(".")),
        "[ !#-\\[\\]-~]{1,10}".prop_map(|q| format!("\"{q}\"")),
        "[a-z]{1,4}[\\\\][\"\\\\][a-z]{0,3}".prop_map(|q| format!("\"{q}\"")),
        "[a-zé孫子]{1,6}",
    ]
}

fn mailbox() -> impl Strategy<Value = Mailbox> {
    let host = prop_oneof![
        4 => domain(),
        1 => any::<[u8; 4]>().prop_map(|o| format!("[{}.{}.{}.{}]", o[0], o[1], o[2], o[3])),
        1 => any::<[u16; 8]>().prop_map(|s| format!("[IPv6:{}]", std::net::Ipv6Addr::from(s))),
    ];
    (local_part(), host).prop_map(|(l, d)| Mailbox::parse(&format!("{l}@{d}")).unwrap())
}

fn xtext_value() -> impl Strategy<Value = String> {
    "[ -~é]{1,30}"
}

fn mail_params() -> impl Strategy<Value = MailParameters> {
    (
        proptest::option::of(any::<u64>()),
        proptest::option::of(prop_oneof![
            Just(Body::SevenBit),
            Just(Body::EightBitMime),
            Just(Body::BinaryMime)
        ]),
        any::<bool>(),
        proptest::option::of(prop_oneof![Just(Ret::Full), Just(Ret::Headers)]),
        proptest::option::of(xtext_value()),
        proptest::option::of(prop_oneof![
            Just(ReversePath::Null),
            mailbox().prop_map(ReversePath::Mailbox)
        ]),
        any::<bool>(),
        proptest::option::of(-9i8..=9),
    )
        .prop_map(
            |(size, body, smtputf8, ret, envid, auth, requiretls, mt_priority)| MailParameters {
                size,
                body,
                smtputf8,
                ret,
                envid,
                auth,
                requiretls,
                mt_priority,
            },
        )
}

fn rcpt_params() -> impl Strategy<Value = RcptParameters> {
    let notify = prop_oneof![
        Just(Notify::NEVER),
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_filter_map("non-empty", |(s, f, d)| {
            let mut n = Notify::NEVER;
            for (on, flag) in [
                (s, Notify::SUCCESS),
                (f, Notify::FAILURE),
                (d, Notify::DELAY),
            ] {
                if on {
                    n = n.union(flag);
                }
            }
            (!n.is_never()).then_some(n)
        }),
    ];
    let orcpt = ("rfc822|utf-8", xtext_value())
        .prop_map(|(addr_type, address)| OriginalRecipient { addr_type, address });
    (proptest::option::of(notify), proptest::option::of(orcpt))
        .prop_map(|(notify, orcpt)| RcptParameters { notify, orcpt })
}

fn helo_name() -> impl Strategy<Value = HeloName> {
    prop_oneof![
        domain().prop_map(|d| HeloName::Domain(Domain::parse(&d).unwrap())),
        any::<[u8; 4]>().prop_map(|o| HeloName::Address(std::net::Ipv4Addr::from(o).into())),
        "[a-z]{1,5}_[a-z0-9]{1,5}".prop_map(HeloName::Other),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    let text = "[!-~]([ -~]{0,20}[!-~])?";
    prop_oneof![
        helo_name().prop_map(Command::Ehlo),
        helo_name().prop_map(Command::Helo),
        helo_name().prop_map(Command::Lhlo),
        (
            prop_oneof![
                Just(ReversePath::Null),
                mailbox().prop_map(ReversePath::Mailbox)
            ],
            mail_params()
        )
            .prop_map(|(from, params)| Command::Mail { from, params }),
        (
            prop_oneof![
                Just(ForwardPath::Postmaster),
                mailbox().prop_map(ForwardPath::Mailbox)
            ],
            rcpt_params()
        )
            .prop_map(|(to, params)| Command::Rcpt { to, params }),
        Just(Command::Data),
        (0u64..=9_999_999_999_999_999_999, any::<bool>())
            .prop_map(|(size, last)| Command::Bdat { size, last }),
        Just(Command::Rset),
        text.prop_map(Command::Vrfy),
        text.prop_map(Command::Expn),
        proptest::option::of(text).prop_map(Command::Help),
        Just(Command::Noop),
        Just(Command::Quit),
        Just(Command::StartTls),
        (
            prop_oneof![
                Just(Mechanism::Plain),
                Just(Mechanism::Login),
                Just(Mechanism::Other("X-TOKEN".into()))
            ],
            proptest::option::of(prop::collection::vec(any::<u8>(), 0..40)),
        )
            .prop_map(|(mechanism, ir)| Command::Auth {
                mechanism,
                initial_response: ir.map(SaslData)
            }),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    let code = (2u16..=5, 0u16..=5, 0u16..=9)
        .prop_map(|(a, b, c)| ReplyCode::new(a * 100 + b * 10 + c).unwrap());
    let lines = prop::collection::vec("([A-Za-z][ -~]{0,40})?", 1..5);
    (code, any::<bool>(), 0u16..=999, 0u16..=999, lines).prop_map(
        |(code, with_status, s, d, lines)| {
            let status = with_status
                .then(|| EnhancedStatus::new((code.as_u16() / 100) as u8, s, d))
                .flatten();
            Reply::from_parts(code, status, lines.join("\n")).unwrap()
        },
    )
}

// ----- round trips -----

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn command_encode_parse_round_trip(cmd in command()) {
        let mut wire = Vec::new();
        cmd.encode(&mut wire);
        prop_assert!(wire.ends_with(b"\r\n"));
        let line = &wire[..wire.len() - 2];
        prop_assert!(!line.contains(&b'\r') && !line.contains(&b'\n'));
        let parsed = Command::parse(line);
        prop_assert_eq!(parsed.as_ref(), Ok(&cmd), "wire: {:?}", String::from_utf8_lossy(&wire));
    }

    #[test]
    fn reply_encode_parse_round_trip(reply in reply()) {
        let wire = reply.to_bytes();
        let mut parser = ReplyParser::default();
        parser.push(&wire);
        let parsed = parser.next_reply();
        prop_assert_eq!(parsed, Some(Ok(reply)));
        prop_assert!(parser.next_reply().is_none());
    }

    #[test]
    fn command_parse_never_panics(line in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Command::parse(&line);
    }

    #[test]
    fn data_decoder_any_split(
        body in prop::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a'), Just(0u8)], 0..200),
        splits in prop::collection::vec(1usize..20, 1..50),
    ) {
        let mut input = body;
        input.extend_from_slice(b"\r\n.\r\nNEXT");
        let mut whole = DataDecoder::new(64);
        let mut whole_out = Vec::new();
        let whole_result = whole.decode(&input, &mut whole_out);
        let mut pieces = DataDecoder::new(64);
        let mut piece_out = Vec::new();
        let (mut pos, mut consumed, mut complete) = (0, 0, false);
        for n in splits.iter().cycle() {
            if pos >= input.len() || complete {
                break;
            }
            let end = (pos + n).min(input.len());
            let r = pieces.decode(&input[pos..end], &mut piece_out);
            consumed += r.consumed;
            complete = r.complete;
            pos = end;
        }
        prop_assert_eq!(whole_out.len() <= 64, true);
        prop_assert_eq!(&piece_out, &whole_out);
        prop_assert_eq!(complete, whole_result.complete);
        prop_assert_eq!(consumed, whole_result.consumed);
        prop_assert_eq!(pieces.stats(), whole.stats());
    }

    #[test]
    fn encode_then_decode_gives_crlf_lines(body in prop::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'x')], 0..100)) {
        let mut wire = Vec::new();
        let mut encoder = DataEncoder::default();
        encoder.encode(&body, &mut wire);
        encoder.finish(&mut wire);
        let mut decoder = DataDecoder::new(u64::MAX);
        let mut out = Vec::new();
        let r = decoder.decode(&wire, &mut out);
        prop_assert!(r.complete);
        prop_assert_eq!(r.consumed, wire.len());
        prop_assert!(!decoder.stats().has_bare_line_endings());
        // The decoded text is the input with every line ending made CRLF.
        let mut expected = Vec::new();
        let mut i = 0;
        while i < body.len() {
            match body[i] {
                b'\r' if body.get(i + 1) == Some(&b'\n') => { expected.extend_from_slice(b"\r\n"); i += 2; }
                b'\r' | b'\n' => { expected.extend_from_slice(b"\r\n"); i += 1; }
                c => { expected.push(c); i += 1; }
            }
        }
        if !expected.is_empty() && !expected.ends_with(b"\r\n") {
            expected.extend_from_slice(b"\r\n");
        }
        prop_assert_eq!(out, expected);
    }
}

// ----- sessions: any split gives the same events and output -----

/// Pieces a server transcript is built from: valid commands, errors, DATA and BDAT.
/// STARTTLS is not among them: what follows it in the same read is dropped on purpose
/// (CVE-2011-0411), so it is the one command whose outcome depends on the split.
const PIECES: &[&[u8]] = &[
    b"EHLO client.test\r\n",
    b"HELO client.test\r\n",
    b"MAIL FROM:<a@ex.test> SIZE=100\r\n",
    b"MAIL FROM:<>\r\n",
    b"RCPT TO:<ok@ours.test>\r\n",
    b"RCPT TO:<nouser@ours.test>\r\n",
    b"RCPT TO:<x@elsewhere.test>\r\n",
    b"RCPT TO:<Postmaster>\r\n",
    b"DATA\r\nSubject: x\r\n\r\n..dot\r\nbody\r\n.\r\n",
    b"DATA\r\nbare\nlf\r\n.\r\n",
    b"BDAT 5\r\nHelloBDAT 3 LAST\r\nabc",
    b"BDAT 0 LAST\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"VRFY x\r\n",
    b"FOOBAR\r\n",
    b"MAIL FROM:<bad@@x>\r\n",
    b"RCPT TO:<>\r\n",
    b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    b"\r\n",
    b"HELP\r\n",
];

fn run_server(transcript: &[u8], chunks: &[usize]) -> (Vec<u8>, Vec<smtp_proto::Event>) {
    let config = ServerConfig {
        extensions: smtp_proto::Extensions {
            starttls: true,
            auth: vec![Mechanism::Plain],
            ..Default::default()
        },
        allow_plaintext_auth: true,
        ..ServerConfig::default()
    };
    let mut h = Harness::new(config);
    let mut pos = 0;
    for n in chunks.iter().cycle() {
        if pos >= transcript.len() {
            break;
        }
        let end = (pos + n).min(transcript.len());
        h.send(&transcript[pos..end]);
        pos = end;
    }
    (h.output, h.events)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn server_session_any_split(
        picks in prop::collection::vec(0..PIECES.len(), 1..25),
        chunks in prop::collection::vec(1usize..64, 1..20),
    ) {
        let transcript: Vec<u8> = picks.iter().flat_map(|&i| PIECES[i].iter().copied()).collect();
        let whole = run_server(&transcript, &[transcript.len().max(1)]);
        let bytewise = run_server(&transcript, &[1]);
        let chunked = run_server(&transcript, &chunks);
        prop_assert_eq!(&bytewise.0, &whole.0, "byte by byte: {:?}", String::from_utf8_lossy(&transcript));
        prop_assert_eq!(&bytewise.1, &whole.1);
        prop_assert_eq!(&chunked.0, &whole.0, "chunked: {:?}", String::from_utf8_lossy(&transcript));
        prop_assert_eq!(&chunked.1, &whole.1);
    }

    #[test]
    fn server_session_never_panics(input in prop::collection::vec(any::<u8>(), 0..600), chunk in 1usize..50) {
        let mut h = Harness::new(ServerConfig::default());
        h.send_chunked(&input, chunk);
    }

    #[test]
    fn client_session_any_split(chunks in prop::collection::vec(1usize..16, 1..10)) {
        let replies: &[u8] = b"220 mx ESMTP\r\n250-mx\r\n250-PIPELINING\r\n250 SIZE 1000\r\n\
250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no\r\n354 go\r\n250 2.0.0 queued\r\n221 bye\r\n";
        let run = |chunks: &[usize]| {
            let mut c = ClientSession::new(ClientConfig::default());
            let mut events = Vec::new();
            let mut pos = 0;
            let mut step = 0;
            for n in chunks.iter().cycle() {
                if pos >= replies.len() {
                    break;
                }
                let end = (pos + n).min(replies.len());
                c.receive(&replies[pos..end]);
                pos = end;
                while let Some(event) = c.poll_event() {
                    let event = event.unwrap();
                    match (&event, step) {
                        (ClientEvent::Greeting(_), _) => c.ehlo(HeloName::parse("me.test").unwrap()),
                        (ClientEvent::Reply { verb: "EHLO", .. }, _) => c.start_transaction(MailTransaction {
                            from: ReversePath::parse("<a@me.test>").unwrap(),
                            params: MailParameters::default(),
                            recipients: vec![
                                (ForwardPath::parse("<b@mx.test>").unwrap(), RcptParameters::default()),
                                (ForwardPath::parse("<c@mx.test>").unwrap(), RcptParameters::default()),
                            ],
                        }),
                        (ClientEvent::ReadyForData, _) => c.send_body(b"hi\r\n"),
                        (ClientEvent::TransactionComplete(_), _) => c.send(Command::Quit),
                        _ => {}
                    }
                    step += 1;
                    events.push(event);
                }
            }
            (events, c.pending_output().to_vec())
        };
        let whole = run(&[replies.len()]);
        prop_assert_eq!(whole.0.len(), 5);
        prop_assert_eq!(&run(&chunks), &whole);
        prop_assert_eq!(run(&[1]), whole);
    }
}

/// A 1 MiB command line gives exactly one `500 5.5.2`, and the session never buffers
/// more than one read plus one line.
#[test]
fn one_mebibyte_line_one_error_bounded_memory() {
    let mut h = Harness::new(ServerConfig::default());
    h.send(b"EHLO c\r\n");
    let skip = h.reply_count();
    let line = vec![b'a'; 1 << 20];
    h.send_chunked(&line, 4096);
    h.send(b"\r\nNOOP\r\n");
    let codes = h.codes_after(skip);
    assert_eq!(codes, ["500 5.5.2", "250 2.0.0"]);
    let bound = 4096 + ServerConfig::default().max_auth_line_length;
    assert!(
        h.max_buffered_input <= bound,
        "buffered {} > {bound}",
        h.max_buffered_input
    );
}

/// Found by the `server_session` fuzz target: a long parameter keyword used to come
/// back whole in the `501` reply, making a reply line longer than 512 octets.
#[test]
fn long_parameter_keyword_keeps_replies_short() {
    let mut h = Harness::new(ServerConfig::default());
    h.send(b"EHLO x\r\n");
    let skip = h.reply_count();
    let mut line = b"MAIL FROM:<a@b.test> ".to_vec();
    line.extend_from_slice(&[b'A'; 600]);
    line.extend_from_slice(b"=\r\nMAIL FROM:<a@b.test> ");
    line.extend_from_slice(&[b'B'; 600]);
    line.extend_from_slice(b"\r\n");
    h.send(&line);
    assert_eq!(h.codes_after(skip), ["501 5.5.4", "555 5.5.4"]);
}

/// The same for an AUTH response line and for a line inside the SASL exchange.
#[test]
fn long_sasl_line_one_error() {
    let mut h = Harness::new_tls(ServerConfig {
        extensions: smtp_proto::Extensions {
            auth: vec![Mechanism::Plain],
            ..Default::default()
        },
        ..ServerConfig::default()
    });
    h.send(b"EHLO c\r\nAUTH PLAIN\r\n");
    let skip = h.reply_count();
    h.send_chunked(&vec![b'A'; 1 << 20], 4096);
    h.send(b"\r\nNOOP\r\n");
    assert_eq!(h.codes_after(skip), ["500 5.5.2", "250 2.0.0"]);
}
