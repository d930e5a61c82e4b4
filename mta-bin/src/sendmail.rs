//! `mta sendmail` (and the binary when invoked as `sendmail`): the Unix way to send mail,
//! so cron, PHP's `mail()` and scripts work unchanged.
//!
//! It reads a message on standard input, completes its header (`From`, `Date`,
//! `Message-ID`), and hands it to the stage chain of the server (through the control
//! socket of a running `mta serve`, or the chain built here when no server runs), which
//! meets it as it meets mail from a login (`Received:`, signing, hooks, custom filters)
//! and queues it durably. It exits 0 only once the message is queued; 75
//! (`EX_TEMPFAIL`) when it could not be, or a filter deferred it; 67 (`EX_NOUSER`) for an
//! unknown local recipient and 69 (`EX_UNAVAILABLE`) for another refusal; 64
//! (`EX_USAGE`) for a bad command line or a message without recipients.
//!
//! ```
//! use mta_bin::sendmail::Options;
//! let o = Options::parse(["-t", "-oi", "-f", "cron@example.org"].map(String::from)).unwrap();
//! assert!(o.extract_recipients && o.ignore_dots);
//! assert_eq!(o.sender.as_deref(), Some("cron@example.org"));
//! ```

use std::io::Read;
use std::path::PathBuf;

use smtp_proto::Mailbox;

/// The exit status for a bad command line or message (`EX_USAGE`, sysexits.h).
pub const EX_USAGE: u8 = 64;
/// The exit status when the message could not be queued now (`EX_TEMPFAIL`).
pub const EX_TEMPFAIL: u8 = 75;
/// The exit status when a recipient is an unknown local user (`EX_NOUSER`).
pub const EX_NOUSER: u8 = 67;
/// The exit status when a filter refused the message for good (`EX_UNAVAILABLE`).
pub const EX_UNAVAILABLE: u8 = 69;

/// The command line, as sendmail understands it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `-t`: recipients from the `To`, `Cc` and `Bcc` fields (and `Bcc` removed).
    pub extract_recipients: bool,
    /// `-i`, `-oi`: a line with a single `.` does not end the message.
    pub ignore_dots: bool,
    /// `-f ADDR` (or `-r ADDR`): the envelope sender; `<>` for the null sender.
    pub sender: Option<String>,
    /// `-F NAME`: the sender's full name, for a `From` field we add.
    pub full_name: Option<String>,
    /// `-C FILE`: the configuration file (default: see [`Config::find`](crate::config::Config::find)).
    pub config: Option<PathBuf>,
    /// `-bp`: list the queue instead (as `mailq`).
    pub list_queue: bool,
    /// `-bs`: speak SMTP on standard input and output instead of reading one message.
    pub smtp: bool,
    /// `-N never` or `-N success,failure,delay`, `-R full|hdrs`, `-V envid`: delivery
    /// status notifications as the DSN extension asks for them (RFC 3461).
    pub dsn: crate::control::InjectDsn,
    /// The recipients on the command line.
    pub recipients: Vec<String>,
}

impl Options {
    /// Parses the arguments after the program name. Options that change nothing here
    /// (`-oem`, `-odb`, `-B 8BITMIME`, `-v`, ...) are accepted and ignored, as
    /// Postfix's sendmail does.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut o = Self::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "--" {
                o.recipients.extend(args.by_ref());
                break;
            }
            let Some(flag) = arg.strip_prefix('-').filter(|f| !f.is_empty()) else {
                o.recipients.push(arg);
                continue;
            };
            // Options with a value take it attached (`-fADDR`) or as the next argument.
            let mut value = |rest: &str| -> Result<String, String> {
                if rest.is_empty() {
                    args.next()
                        .ok_or_else(|| format!("-{flag}: a value is needed"))
                } else {
                    Ok(rest.to_owned())
                }
            };
            match flag.split_at(1) {
                ("t", "") => o.extract_recipients = true,
                ("i", "") => o.ignore_dots = true,
                ("o", "i") => o.ignore_dots = true,
                ("f" | "r", rest) => o.sender = Some(value(rest)?),
                ("F", rest) => o.full_name = Some(value(rest)?),
                ("C", rest) => o.config = Some(PathBuf::from(value(rest)?)),
                ("b", "p") => o.list_queue = true,
                ("b", "s") => o.smtp = true,
                ("b", "m") => {}
                ("b", other) => return Err(format!("-b{other} is not supported")),
                ("N", rest) => o.dsn.notify = Some(parse_notify(&value(rest)?)?),
                ("R", rest) => {
                    o.dsn.ret = Some(match value(rest)?.to_ascii_lowercase().as_str() {
                        "hdrs" => true,
                        "full" => false,
                        other => return Err(format!("-R {other}: use full or hdrs")),
                    });
                }
                ("V", rest) => {
                    let envid = value(rest)?;
                    if envid.len() > 100 || !envid.bytes().all(|b| (33..127).contains(&b)) {
                        return Err(
                            "-V: an envelope id is up to 100 printable ASCII characters".into()
                        );
                    }
                    o.dsn.envid = Some(envid);
                }
                // Values we accept and do not use.
                ("B" | "O" | "L" | "X", rest) => {
                    value(rest)?;
                }
                ("o" | "v" | "U" | "n" | "m" | "e" | "q", _) => {}
                _ => return Err(format!("unknown option -{flag}")),
            }
        }
        Ok(o)
    }
}

/// `-N`'s value: `never`, or a comma-separated list of `success`, `failure`, `delay`;
/// as [`RecipientDsn::notify`](mail_queue::RecipientDsn) bits.
fn parse_notify(value: &str) -> Result<u8, String> {
    let mut bits = 0;
    for word in value.split(',').map(|w| w.trim().to_ascii_lowercase()) {
        bits |= match word.as_str() {
            "never" if value.trim().eq_ignore_ascii_case("never") => 0,
            "success" => 1,
            "failure" => 2,
            "delay" => 4,
            _ => {
                return Err(format!(
                    "-N {value}: use never, or success, failure and delay"
                ));
            }
        };
    }
    Ok(bits)
}

/// What the message is completed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    /// Our host name (`Message-ID`, `Received`).
    pub hostname: String,
    /// The domain for addresses without one (`root` becomes `root@<domain>`).
    pub domain: String,
    /// The invoking user's login name.
    pub user: String,
    /// Now, in Unix seconds.
    pub now: u64,
    /// Unique within this host for this second (the process id will do).
    pub unique: u64,
}

/// A message ready to queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    /// The envelope sender; empty for `<>`.
    pub from: String,
    /// The recipients.
    pub recipients: Vec<String>,
    /// The message, CRLF line endings, header completed.
    pub message: Vec<u8>,
}

/// Reads the message from `input`: until the end, or a line with a single `.` unless
/// `ignore_dots`; at most `limit` octets.
pub fn read_message(
    mut input: impl Read,
    ignore_dots: bool,
    limit: u64,
) -> Result<Vec<u8>, String> {
    let mut raw = Vec::new();
    input
        .by_ref()
        .take(limit + 1)
        .read_to_end(&mut raw)
        .map_err(|e| format!("cannot read the message: {e}"))?;
    if raw.len() as u64 > limit {
        return Err(format!(
            "the message is larger than the limit of {limit} octets"
        ));
    }
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let text = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        if !ignore_dots && text == b"." {
            break;
        }
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

/// Completes the message and works out its envelope.
pub fn prepare(message: &[u8], options: &Options, cx: &Context) -> Result<Prepared, String> {
    let qualify = |address: &str| -> Result<String, String> {
        let address = address.trim();
        let full = if address.contains('@') {
            address.to_owned()
        } else {
            format!("{address}@{}", cx.domain)
        };
        Mailbox::parse(&full)
            .map(|m| m.to_string())
            .map_err(|_| format!("{address:?} is not a mail address"))
    };
    let (header, body) = split_header(message);
    // mail-parser reads the header: folded lines, groups, comments, quoted names and
    // encoded words, the forms that decide where `-t` sends the mail.
    let parsed = mail_parser::MessageParser::default().parse_headers(header);
    let fields: &[mail_parser::Header<'_>] = parsed.as_ref().map_or(&[], |m| m.headers());
    let mut recipients = Vec::new();
    for r in &options.recipients {
        for address in address_list(r) {
            recipients.push(qualify(&address)?);
        }
    }
    if options.extract_recipients {
        for field in fields.iter().filter(|f| is_recipient_field(&f.name)) {
            if let mail_parser::HeaderValue::Address(list) = &field.value {
                for address in list.iter().filter_map(address_of) {
                    recipients.push(qualify(address)?);
                }
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    recipients.retain(|r| seen.insert(r.to_ascii_lowercase()));
    if recipients.is_empty() {
        return Err("no recipients: name them on the command line or use -t".into());
    }
    let from = match options.sender.as_deref().map(str::trim) {
        Some("<>" | "") => String::new(),
        Some(sender) => qualify(sender.trim_start_matches('<').trim_end_matches('>'))?,
        None => qualify(&cx.user)?,
    };
    let has = |field: &str| {
        fields
            .iter()
            .any(|f| f.name.as_str().eq_ignore_ascii_case(field))
    };
    let date =
        smtp_proto::rfc5322_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(cx.now));
    let mut out = String::new();
    if !has("From") {
        let own;
        let address = if from.is_empty() {
            own = qualify(&cx.user)?;
            &own
        } else {
            &from
        };
        match options.full_name.as_deref().filter(|n| !n.is_empty()) {
            Some(name) => {
                let name = name.replace(['"', '\\', '\r', '\n'], "");
                out.push_str(&format!("From: \"{name}\" <{address}>\r\n"));
            }
            None => out.push_str(&format!("From: {address}\r\n")),
        }
    }
    if !has("Date") {
        out.push_str(&format!("Date: {date}\r\n"));
    }
    if !has("Message-ID") {
        out.push_str(&format!(
            "Message-ID: <{}.{}@{}>\r\n",
            cx.now, cx.unique, cx.hostname
        ));
    }
    let mut bytes = out.into_bytes();
    // The header as given, without Bcc when the recipients came from it (RFC 5322 §3.6.3).
    let mut kept = 0;
    if options.extract_recipients {
        for bcc in fields
            .iter()
            .filter(|f| f.name == mail_parser::HeaderName::Bcc)
        {
            let (start, end) = (bcc.offset_field as usize, bcc.offset_end as usize);
            bytes.extend_from_slice(header.get(kept..start).unwrap_or_default());
            kept = end.max(kept);
        }
    }
    bytes.extend_from_slice(header.get(kept..).unwrap_or_default());
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(body);
    Ok(Prepared {
        from,
        recipients,
        message: bytes,
    })
}

/// The header lines (each with its CRLF) and the body after the blank line. A message
/// that does not start with a header field is all body.
fn split_header(message: &[u8]) -> (&[u8], &[u8]) {
    let starts_with_field = message
        .iter()
        .position(|&b| b == b':' || b == b'\r' || b == b' ')
        .is_some_and(|i| i > 0 && message[i] == b':');
    if !starts_with_field {
        return (&[], message.strip_prefix(b"\r\n").unwrap_or(message));
    }
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (&message[..i + 2], &message[i + 4..]),
        None => (message, &[]),
    }
}

/// The address of an address-list entry; a bare word (`root`, as cron writes it) is
/// a local user's name, which mail-parser reads as a display name.
fn address_of<'a>(addr: &'a mail_parser::Addr<'_>) -> Option<&'a str> {
    addr.address().or_else(|| {
        addr.name()
            .filter(|n| !n.is_empty() && !n.contains(char::is_whitespace))
    })
}

/// To, Cc or Bcc.
fn is_recipient_field(name: &mail_parser::HeaderName<'_>) -> bool {
    use mail_parser::HeaderName;
    matches!(name, HeaderName::To | HeaderName::Cc | HeaderName::Bcc)
}

/// The addresses in an address list given on the command line (`Ann <a@x>, b@y`), read
/// by mail-parser as a `To` field.
fn address_list(value: &str) -> Vec<String> {
    let field = format!("To: {}\r\n\r\n", value.replace(['\r', '\n'], " "));
    let parsed = mail_parser::MessageParser::default().parse_headers(field.as_bytes());
    parsed
        .as_ref()
        .and_then(|m| m.to())
        .map(|list| {
            list.iter()
                .filter_map(address_of)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Runs sendmail with the arguments after the program name, the message meeting the
/// filters of `custom` when no server runs; returns the exit status.
pub fn run(args: Vec<String>, custom: &crate::MtaBuilder) -> u8 {
    let options = match Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sendmail: {e}");
            return EX_USAGE;
        }
    };
    if options.list_queue {
        let args = crate::queue_cmd::QueueArgs {
            config: options.config,
            json: false,
            command: crate::queue_cmd::QueueCommand::List {
                domain: None,
                sender: None,
                state: None,
                older_than: None,
                limit: None,
            },
        };
        return match crate::queue_cmd::run(args) {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("sendmail: {e:#}");
                EX_TEMPFAIL
            }
        };
    }
    if options.smtp {
        return match smtp_on_stdio(&options, custom) {
            Ok(()) => 0,
            Err((status, e)) => {
                eprintln!("sendmail: {e:#}");
                status
            }
        };
    }
    match send(&options, custom) {
        Ok(id) => {
            tracing::debug!(queue_id = %id, "queued");
            0
        }
        Err((status, e)) => {
            eprintln!("sendmail: {e:#}");
            status
        }
    }
}

/// `-bs`: an SMTP session on standard input and output (as inetd-style tools and some
/// mailers use it), run by smtp-proto's server session: no TLS and no AUTH (the caller
/// is local), any recipient; each message is completed and queued as with plain
/// sendmail, and answered `250` only once it is queued.
fn smtp_on_stdio(options: &Options, custom: &crate::MtaBuilder) -> Result<(), (u8, anyhow::Error)> {
    use smtp_proto::{EnhancedStatus, Event, ForwardPath, Reply, ReplyCode, ReversePath};
    use std::io::{Read, Write};
    let config = load_config(options)?;
    let io = |e: std::io::Error| (EX_TEMPFAIL, anyhow::Error::from(e));
    let mut protocol = smtp_proto::ServerConfig {
        hostname: config.hostname.clone(),
        max_message_size: config.limits.max_message_size.unwrap_or(DEFAULT_MAX_SIZE),
        ..smtp_proto::ServerConfig::default()
    };
    protocol.extensions.starttls = false;
    protocol.extensions.auth = Vec::new();
    let mut session = smtp_proto::ServerSession::new(std::sync::Arc::new(protocol));
    let (mut input, mut output) = (std::io::stdin().lock(), std::io::stdout().lock());
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        while let Some(event) = session.poll_event() {
            match event {
                Event::Message { envelope, body } => {
                    let from = match &envelope.from {
                        ReversePath::Null => "<>".to_owned(),
                        ReversePath::Mailbox(m) => m.to_string(),
                    };
                    let recipients = envelope
                        .recipients
                        .iter()
                        .map(|r| match &r.to {
                            ForwardPath::Postmaster => "postmaster".to_owned(),
                            ForwardPath::Mailbox(m) => m.to_string(),
                        })
                        .collect();
                    let one = Options {
                        sender: Some(from),
                        recipients,
                        config: options.config.clone(),
                        ..Options::default()
                    };
                    let reply = match submit(&config, &one, &body, custom) {
                        Ok(id) => Reply::new(
                            ReplyCode::OK,
                            EnhancedStatus::OK,
                            format!("Ok: queued as {id}"),
                        ),
                        // The envelope passed smtp-proto's checks, so a usage error
                        // here is the message itself: permanent.
                        Err((EX_USAGE, e)) => Reply::new(
                            ReplyCode::TRANSACTION_FAILED,
                            EnhancedStatus::INVALID_ARGUMENTS,
                            format!("Message refused: {e:#}"),
                        ),
                        Err((_, e)) => Reply::new(
                            ReplyCode::LOCAL_ERROR,
                            EnhancedStatus::SYSTEM_TEMPORARY,
                            format!("Not queued, try again later: {e:#}"),
                        ),
                    };
                    session.respond(reply);
                }
                _ => session.accept(),
            }
        }
        let pending = session.take_output();
        if !pending.is_empty() {
            output.write_all(&pending).map_err(io)?;
            output.flush().map_err(io)?;
        }
        if session.is_closed() {
            return Ok(());
        }
        let n = input.read(&mut buffer).map_err(io)?;
        if n == 0 {
            session.shutdown();
            let _ = output.write_all(&session.take_output());
            return Ok(());
        }
        session.receive(&buffer[..n]);
    }
}

/// Reads, completes and queues the message; returns its queue id.
fn send(options: &Options, custom: &crate::MtaBuilder) -> Result<String, (u8, anyhow::Error)> {
    let config = load_config(options)?;
    let limit = config.limits.max_message_size.unwrap_or(DEFAULT_MAX_SIZE);
    let message = read_message(std::io::stdin().lock(), options.ignore_dots, limit)
        .map_err(|e| (EX_USAGE, anyhow::anyhow!(e)))?;
    submit(&config, options, &message, custom)
}

/// The configuration (see [`Config::find`](crate::config::Config::find)).
pub(crate) fn load_config(options: &Options) -> Result<crate::config::Config, (u8, anyhow::Error)> {
    use crate::config::Config;
    Config::find(options.config.as_deref()).map_err(|e| (EX_TEMPFAIL, e))
}

/// Completes `message` (see [`prepare`]) and queues it: through the control socket of a
/// running server, or in the queue itself (through the chain of `custom`'s filters).
/// Returns the queue id, or the exit status and the error.
pub fn submit(
    config: &crate::config::Config,
    options: &Options,
    message: &[u8],
    custom: &crate::MtaBuilder,
) -> Result<String, (u8, anyhow::Error)> {
    use crate::control::{self, Request, Response};
    let temp = |e: anyhow::Error| (EX_TEMPFAIL, e);
    let usage = |e: String| (EX_USAGE, anyhow::anyhow!(e));
    let user = login_name();
    let cx = Context {
        domain: config
            .local
            .domains
            .first()
            .cloned()
            .unwrap_or_else(|| config.hostname.clone()),
        hostname: config.hostname.clone(),
        user,
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        unique: u64::from(std::process::id()),
    };
    let prepared = prepare(message, options, &cx).map_err(usage)?;
    let request = Request::Inject {
        from: prepared.from,
        recipients: prepared.recipients,
        message: prepared.message,
        dsn: options.dsn.clone(),
    };
    let socket = control::socket_path(&config.queue.path);
    let response = match (control::request(&socket, &request), &config.sendmail.socket) {
        (Ok(Some(response)), _) => response,
        (Ok(None), _) => crate::queue_cmd::offline(config, request, custom).map_err(temp)?,
        // Not the server's user: hand the message in on the socket for everyone.
        (Err(e), Some(public)) if permission_denied(&e) => control::request(public, &request)
            .map_err(temp)?
            .ok_or_else(|| {
                temp(anyhow::anyhow!(
                    "no server is running ({} is closed)",
                    public.display()
                ))
            })?,
        (Err(e), None) if permission_denied(&e) => {
            return Err(temp(e.context(
                "only root and the server's user can queue mail here; \
                 the administrator can open [sendmail] socket to other users",
            )));
        }
        (Err(e), _) => return Err(temp(e)),
    };
    match response {
        Response::Queued { id } => Ok(id),
        Response::Error { message } => Err(temp(anyhow::anyhow!(message))),
        Response::Refused { code, message } => {
            let status = match code {
                400..=499 => EX_TEMPFAIL,
                _ if message.contains(" 5.1.1 ") => EX_NOUSER,
                _ => EX_UNAVAILABLE,
            };
            Err((status, anyhow::anyhow!("refused: {message}")))
        }
        other => Err(temp(anyhow::anyhow!("unexpected answer: {other:?}"))),
    }
}

/// Who runs this: the name of the real user id (which the caller cannot choose), else
/// `$USER` or `$LOGNAME`.
fn login_name() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| {
            ["USER", "LOGNAME"]
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Whether `e` comes from being refused access (to the control socket or the queue).
fn permission_denied(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    })
}

/// The message size limit when the configuration sets none (the server's default).
const DEFAULT_MAX_SIZE: u64 = 50 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> Context {
        Context {
            hostname: "mx.example.org".into(),
            domain: "example.org".into(),
            user: "cron".into(),
            now: 1_795_550_400,
            unique: 42,
        }
    }

    #[test]
    fn options_as_sendmail_takes_them() {
        let o = Options::parse(
            [
                "-oi",
                "-fbounces@example.org",
                "-F",
                "Cron Daemon",
                "-oem",
                "-B",
                "8BITMIME",
                "a@x.test",
                "--",
                "-b@y.test",
            ]
            .map(String::from),
        )
        .unwrap();
        assert!(o.ignore_dots && !o.extract_recipients);
        assert_eq!(o.sender.as_deref(), Some("bounces@example.org"));
        assert_eq!(o.full_name.as_deref(), Some("Cron Daemon"));
        assert_eq!(o.recipients, ["a@x.test", "-b@y.test"]);
        assert!(Options::parse(["-bs".to_owned()]).unwrap().smtp);
        assert!(Options::parse(["-bx".to_owned()]).is_err());
        assert!(Options::parse(["-Z".to_owned()]).is_err());
        assert!(
            Options::parse(["-f".to_owned()]).is_err(),
            "a value is needed"
        );
        assert!(Options::parse(["-bp".to_owned()]).unwrap().list_queue);
    }

    #[test]
    fn dsn_options_become_the_envelope_parameters() {
        let args = |a: &[&str]| Options::parse(a.iter().map(|s| (*s).to_owned()));
        let o = args(&["-N", "success,delay", "-Rhdrs", "-V", "job-42", "a@x.test"]).unwrap();
        assert_eq!(o.dsn.notify, Some(1 | 4));
        assert_eq!(o.dsn.ret, Some(true));
        assert_eq!(o.dsn.envid.as_deref(), Some("job-42"));
        assert_eq!(args(&["-Nnever"]).unwrap().dsn.notify, Some(0));
        assert_eq!(args(&["-R", "FULL"]).unwrap().dsn.ret, Some(false));
        assert!(args(&["-N", "never,success"]).is_err());
        assert!(args(&["-N", "sometimes"]).is_err());
        assert!(args(&["-R", "body"]).is_err());
        assert!(args(&["-V", "has space"]).is_err());
    }

    #[test]
    fn a_lone_dot_ends_the_message_unless_i() {
        let input = b"Subject: x\n\nline\n.\nafter\n";
        assert_eq!(
            read_message(&input[..], false, 1000).unwrap(),
            b"Subject: x\r\n\r\nline\r\n"
        );
        assert_eq!(
            read_message(&input[..], true, 1000).unwrap(),
            b"Subject: x\r\n\r\nline\r\n.\r\nafter\r\n"
        );
        assert!(
            read_message(&input[..], true, 10).is_err(),
            "over the limit"
        );
    }

    #[test]
    fn dash_t_takes_recipients_from_the_header_and_drops_bcc() {
        let o = Options {
            extract_recipients: true,
            ..Options::default()
        };
        let message = b"To: Ann <ann@x.test>, \"Doe, J\" <j@y.test>\r\nCc: root\r\nBcc: hidden@z.test,\r\n other@z.test\r\nSubject: hi\r\n\r\nbody\r\n";
        let p = prepare(message, &o, &cx()).unwrap();
        assert_eq!(
            p.recipients,
            [
                "ann@x.test",
                "j@y.test",
                "root@example.org",
                "hidden@z.test",
                "other@z.test"
            ]
        );
        assert_eq!(p.from, "cron@example.org");
        let text = String::from_utf8(p.message).unwrap();
        assert!(text.starts_with("From: cron@example.org\r\nDate: Tue, 24 Nov 2026 20:00:00 +0000\r\nMessage-ID: <1795550400.42@mx.example.org>\r\nTo: Ann"), "{text}");
        assert!(!text.contains("Bcc") && !text.contains("hidden"), "{text}");
        assert!(text.ends_with("Subject: hi\r\n\r\nbody\r\n"), "{text}");
    }

    #[test]
    fn dash_t_reads_groups_comments_quoted_names_and_encoded_words() {
        let o = Options {
            extract_recipients: true,
            ..Options::default()
        };
        let message = b"To: undisclosed-recipients:;\r\n\
            Cc: Team: a@t.test, \"Doe, J <evil@bad.test>\" <j@t.test>;,\r\n\
            \t=?UTF-8?B?R3LDvMOfZQ==?= <g@t.test> (greetings, from@bad.test)\r\n\
            bcc: (nobody) <b@t.test>\r\n\
            To: second@t.test\r\n\
            Subject: x\r\n\r\nbody\r\n";
        let p = prepare(message, &o, &cx()).unwrap();
        assert_eq!(
            p.recipients,
            [
                "a@t.test",
                "j@t.test",
                "g@t.test",
                "b@t.test",
                "second@t.test"
            ]
        );
        let text = String::from_utf8(p.message).unwrap();
        assert!(!text.to_ascii_lowercase().contains("bcc"), "{text}");
        assert!(
            text.contains("To: second@t.test\r\nSubject: x\r\n"),
            "{text}"
        );
    }

    #[test]
    fn sender_name_and_existing_fields() {
        let o = Options {
            sender: Some("<>".into()),
            full_name: Some("The \"Daemon\"".into()),
            recipients: vec!["a@x.test".into()],
            ..Options::default()
        };
        let p = prepare(b"no header here\r\n", &o, &cx()).unwrap();
        assert_eq!(p.from, "", "the null sender");
        let text = String::from_utf8(p.message).unwrap();
        assert!(
            text.contains("From: \"The Daemon\" <cron@example.org>\r\n"),
            "{text}"
        );
        assert!(
            text.ends_with("\r\n\r\nno header here\r\n"),
            "all body: {text}"
        );

        let p = prepare(
            b"From: me@else.test\r\nDate: x\r\nMessage-ID: <m@else.test>\r\n\r\nb\r\n",
            &o,
            &cx(),
        )
        .unwrap();
        let text = String::from_utf8(p.message).unwrap();
        assert_eq!(text.matches("From:").count(), 1, "{text}");
        assert_eq!(text.matches("Date:").count(), 1, "{text}");
        assert_eq!(text.matches("Message-ID:").count(), 1, "{text}");
        assert!(
            prepare(b"x\r\n", &Options::default(), &cx()).is_err(),
            "no recipients"
        );
        let bad = Options {
            recipients: vec!["a b@x".into()],
            ..Options::default()
        };
        assert!(prepare(b"x\r\n", &bad, &cx()).is_err());
    }
}
