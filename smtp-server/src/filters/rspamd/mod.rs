#![cfg(feature = "rspamd")]
//! rspamd over its HTTP protocol (`/checkv2`), as a data-stage filter (cargo feature
//! `rspamd`).
//!
//! At the end of DATA the filter posts the message (the headers added by earlier
//! filters, then the client's bytes) to an rspamd worker (the normal worker or the
//! proxy, port 11333; the controller works too with a password) with the envelope in
//! the request headers rspamd reads (`IP`, `Helo`, `Hostname`, `From`, one `Rcpt` per
//! recipient, `User` for a login, `TLS-Version`, `TLS-Cipher`, `Settings-ID`), and maps
//! rspamd's JSON answer:
//!
//! | `action` | SMTP | message |
//! | --- | --- | --- |
//! | `reject` | `554 5.7.1` with rspamd's `messages.smtp_message` (or `Spam message rejected`) | refused |
//! | `soft reject`, `greylist` | `451 4.7.1` with `smtp_message` (or `Try again later`) | refused for now |
//! | `rewrite subject` | accepted | `Subject:` replaced by rspamd's `subject`; `X-Spam: Yes` |
//! | `add header` | accepted | `X-Spam: Yes` |
//! | `no action` | accepted | |
//! | anything else, or no answer | [`OnFailure`] | |
//!
//! With [`RspamdSettings::add_headers`] (the default) every scanned message that is
//! accepted gets, at the top:
//!
//! ```text
//! X-Spam-Status: Yes, score=7.20 required=15.00
//! X-Spam-Score: 7.20
//! X-Spam: Yes
//! ```
//!
//! `X-Spam-Status` says `Yes` for `add header` and `rewrite subject`, `No` otherwise;
//! `required` is rspamd's `required_score` (its reject threshold); `X-Spam` is there only
//! with `Yes`. The headers rspamd asks for in `milter.add_headers` follow, and the fields
//! named in `milter.remove_headers` are taken out of the client's header. Fields named
//! `X-Spam-Status`, `X-Spam-Score` or `X-Spam` that came with the message are removed,
//! so a sender cannot vouch for itself.
//!
//! A message larger than [`RspamdSettings::max_size`] is not scanned and passes (with
//! no verdict header).
//!
//! ```
//! use smtp_server::filters::rspamd::{OnFailure, Rspamd, RspamdSettings};
//! use std::time::Duration;
//!
//! # let sink = tower::service_fn(|_| async { Ok::<_, smtp_server::BoxError>(smtp_server::Decision::accept()) });
//! let rspamd = Rspamd::new(RspamdSettings {
//!     address: "http://127.0.0.1:11333".parse().unwrap(),
//!     timeout: Duration::from_secs(15),
//!     on_failure: OnFailure::Accept,
//!     ..RspamdSettings::default()
//! });
//! let stages = smtp_server::Stages::new(sink).data_layer(smtp_server::filter_async(rspamd));
//! ```

mod headers;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::header::{CONTENT_LENGTH, HOST, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use smtp_proto::{EnhancedStatus, ForwardPath};
use tracing::{debug, warn};

use self::headers::{Edit, edit, fold_safe, is_field_name, subject_field};
use crate::content::Content;
use crate::filter::{AsyncCheck, CheckFuture, Flow};
use crate::filters::{Endpoint, ServiceStream, connect_service};
use crate::stage::{DataRequest, Decision};

/// The header fields this filter writes, removed from incoming messages.
const VERDICT_FIELDS: [&str; 3] = ["X-Spam-Status", "X-Spam-Score", "X-Spam"];

/// The largest JSON answer read.
const MAX_REPLY: usize = 1024 * 1024;

/// How to reach rspamd and what to do with its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RspamdSettings {
    /// The worker: `http://host:port`, `host:port` or `unix:/path` (default
    /// `http://127.0.0.1:11333`, the normal worker).
    pub address: RspamdAddress,
    /// How long one scan may take, connecting included (default 20 s; rspamd's own
    /// `task_timeout` is 8 s).
    pub timeout: Duration,
    /// Sent as the `Password` header (needed by the controller worker only).
    pub password: Option<String>,
    /// Larger messages (added headers included) are not scanned (default 20 MiB).
    pub max_size: usize,
    /// What to answer when rspamd is down, late or answers garbage (default
    /// [`OnFailure::Tempfail`]).
    pub on_failure: OnFailure,
    /// Whether to add the verdict headers and rspamd's milter headers (default on).
    pub add_headers: bool,
    /// Sent as `Settings-ID`: which of rspamd's settings to scan with (default none).
    pub settings_id: Option<String>,
}

impl Default for RspamdSettings {
    fn default() -> Self {
        Self {
            address: RspamdAddress::Http {
                host: "127.0.0.1".into(),
                port: 11333,
            },
            timeout: Duration::from_secs(20),
            password: None,
            max_size: 20 * 1024 * 1024,
            on_failure: OnFailure::Tempfail,
            add_headers: true,
            settings_id: None,
        }
    }
}

/// What the filter answers when rspamd fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnFailure {
    /// `451 4.7.1`: the client tries again later.
    #[default]
    Tempfail,
    /// Accept the message unscanned (no verdict header), with a warning in the log.
    Accept,
}

/// The address of an rspamd worker (plain HTTP: rspamd speaks no TLS itself).
///
/// ```
/// use smtp_server::filters::rspamd::RspamdAddress;
/// let http: RspamdAddress = "http://localhost:11333".parse().unwrap();
/// assert_eq!(http, RspamdAddress::Http { host: "localhost".into(), port: 11333 });
/// assert_eq!("127.0.0.1".parse::<RspamdAddress>().unwrap().to_string(), "http://127.0.0.1:11333");
/// assert_eq!("[::1]:11333".parse::<RspamdAddress>().unwrap().to_string(), "http://[::1]:11333");
/// let unix: RspamdAddress = "unix:/run/rspamd/normal.sock".parse().unwrap();
/// assert_eq!(unix, RspamdAddress::Unix("/run/rspamd/normal.sock".into()));
/// assert!("https://rspamd.example:11333".parse::<RspamdAddress>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RspamdAddress {
    /// `http://host:port` (port 11333 when not given).
    Http {
        /// A host name or an address.
        host: String,
        /// The port.
        port: u16,
    },
    /// `unix:/path`: a Unix-domain stream socket.
    Unix(PathBuf),
}

/// An address that is not `http://host[:port]`, `host[:port]` or `unix:/path`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("an rspamd address is http://host[:port], host[:port] or unix:/path, not {0:?}")]
pub struct InvalidRspamdAddress(String);

impl std::str::FromStr for RspamdAddress {
    type Err = InvalidRspamdAddress;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidRspamdAddress(s.to_owned());
        if let Some(path) = s.strip_prefix("unix:") {
            return match path {
                "" => Err(invalid()),
                path => Ok(Self::Unix(path.into())),
            };
        }
        let rest = s.strip_prefix("http://").unwrap_or(s);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '@', '?', '#']) || rest.contains("://") {
            return Err(invalid());
        }
        let (host, port) = match rest.rsplit_once(':') {
            // A bare IPv6 address has colons but no brackets: no port then.
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                (host, port.parse().map_err(|_| invalid())?)
            }
            _ => (rest, 11333),
        };
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || port == 0 {
            return Err(invalid());
        }
        Ok(Self::Http {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for RspamdAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http { host, port } if host.contains(':') => write!(f, "http://[{host}]:{port}"),
            Self::Http { host, port } => write!(f, "http://{host}:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The rspamd filter: a data-stage [`AsyncCheck`]; plug it in with
/// [`filter_async`](crate::filter_async()). Cloning is cheap.
#[derive(Clone, Debug)]
pub struct Rspamd {
    settings: Arc<RspamdSettings>,
}

impl Rspamd {
    /// A filter asking the rspamd of `settings`.
    pub fn new(settings: RspamdSettings) -> Self {
        Self {
            settings: Arc::new(settings),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &RspamdSettings {
        &self.settings
    }
}

impl AsyncCheck<DataRequest> for Rspamd {
    fn check(&self, mut request: DataRequest) -> CheckFuture<DataRequest> {
        let settings = Arc::clone(&self.settings);
        Box::pin(async move {
            let size = request.added_headers.len() + request.body.len();
            if size > settings.max_size {
                debug!(
                    size,
                    max = settings.max_size,
                    "message too large for rspamd, not scanned"
                );
                strip_verdict(&settings, &mut request);
                return Ok(Flow::Continue(request));
            }
            let answer =
                match tokio::time::timeout(settings.timeout, scan(&settings, &request)).await {
                    Ok(Ok(answer)) => answer,
                    Ok(Err(failure)) => return Ok(fail(&settings, request, &failure)),
                    Err(_) => {
                        let why = format!("no answer within {:?}", settings.timeout);
                        return Ok(fail(&settings, request, &why));
                    }
                };
            debug!(
                action = ?answer.action,
                score = answer.score,
                required = answer.required_score,
                symbols = %answer.symbols.keys().map(String::as_str).collect::<Vec<_>>().join(","),
                "rspamd answered"
            );
            let text = answer.messages.smtp_message.as_deref().map(reply_text);
            let flow = match answer.action {
                Action::Reject => Flow::Decide(Decision::reject::<554>(
                    EnhancedStatus::NOT_AUTHORIZED,
                    text.unwrap_or_else(|| "Spam message rejected".into()),
                )),
                Action::SoftReject | Action::Greylist => Flow::Decide(Decision::defer::<451>(
                    EnhancedStatus::NOT_AUTHORIZED_TEMPORARY,
                    text.unwrap_or_else(|| "Try again later".into()),
                )),
                Action::AddHeader | Action::RewriteSubject | Action::Pass => {
                    apply(&settings, &answer, &mut request);
                    Flow::Continue(request)
                }
                Action::Other => {
                    return Ok(fail(
                        &settings,
                        request,
                        &"an action this server does not carry out",
                    ));
                }
            };
            Ok(flow)
        })
    }
}

/// rspamd's answer (the fields used; the others are ignored).
#[derive(Debug, Deserialize)]
struct Answer {
    action: Action,
    #[serde(default)]
    score: f64,
    #[serde(default)]
    required_score: f64,
    #[serde(default)]
    symbols: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    messages: Messages,
    #[serde(default)]
    subject: Option<String>,
    /// `add_headers` and `remove_headers`, read leniently.
    #[serde(default)]
    milter: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct Messages {
    #[serde(default)]
    smtp_message: Option<String>,
}

/// rspamd's actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
enum Action {
    #[serde(rename = "reject")]
    Reject,
    #[serde(rename = "soft reject")]
    SoftReject,
    #[serde(rename = "greylist")]
    Greylist,
    #[serde(rename = "add header")]
    AddHeader,
    #[serde(rename = "rewrite subject")]
    RewriteSubject,
    #[serde(rename = "no action")]
    Pass,
    /// `discard`, `quarantine`, anything newer.
    #[serde(other)]
    Other,
}

/// Why a scan failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("HTTP status {0}")]
    Status(StatusCode),
    #[error("reading the answer: {0}")]
    Body(tower::BoxError),
    #[error("a garbled answer: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a bad request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// The flow for a failure, logged.
fn fail(
    settings: &RspamdSettings,
    mut request: DataRequest,
    why: &dyn fmt::Display,
) -> Flow<DataRequest> {
    warn!(address = %settings.address, action = ?settings.on_failure, "rspamd failed: {why}");
    match settings.on_failure {
        OnFailure::Tempfail => Flow::Decide(Decision::defer::<451>(
            EnhancedStatus::NOT_AUTHORIZED_TEMPORARY,
            "Spam filter unavailable, try again later",
        )),
        OnFailure::Accept => {
            strip_verdict(settings, &mut request);
            Flow::Continue(request)
        }
    }
}

/// A reply text from rspamd: its first line, without control characters, 400 bytes at
/// most.
fn reply_text(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    let mut out: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > 400 {
        let mut end = 400;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

/// Removes the verdict fields that came with the message.
fn strip_verdict(settings: &RspamdSettings, request: &mut DataRequest) {
    if !settings.add_headers {
        return;
    }
    let edited = edit(&request.body, |name, _, _| {
        if VERDICT_FIELDS.iter().any(|v| v.eq_ignore_ascii_case(name)) {
            Edit::Remove
        } else {
            Edit::Keep
        }
    });
    if let Some(body) = edited {
        request.body = Content::from(body);
    }
}

/// Carries out an accepting answer: the subject, the removals, the headers.
fn apply(settings: &RspamdSettings, answer: &Answer, request: &mut DataRequest) {
    let spam = matches!(answer.action, Action::AddHeader | Action::RewriteSubject);
    let subject = match (answer.action, &answer.subject) {
        (Action::RewriteSubject, Some(subject)) => Some(subject.as_str()),
        _ => None,
    };
    let removals = if settings.add_headers {
        answer
            .milter
            .as_ref()
            .map(milter_removals)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut subject_done = false;
    let edited = edit(&request.body, |name, nth, count| {
        if settings.add_headers && VERDICT_FIELDS.iter().any(|v| v.eq_ignore_ascii_case(name)) {
            return Edit::Remove;
        }
        let removed = removals.iter().any(|(field, index)| {
            field.eq_ignore_ascii_case(name)
                && match *index {
                    0 => true,
                    i if i > 0 => usize::try_from(i).is_ok_and(|i| i == nth),
                    i => usize::try_from(-i).is_ok_and(|i| i == count + 1 - nth),
                }
        });
        if removed {
            return Edit::Remove;
        }
        match subject {
            Some(text) if name.eq_ignore_ascii_case("Subject") => {
                if subject_done {
                    Edit::Remove
                } else {
                    subject_done = true;
                    Edit::Replace(subject_field(text))
                }
            }
            _ => Edit::Keep,
        }
    });
    if let Some(body) = edited {
        request.body = Content::from(body);
    }
    if let (Some(text), false) = (subject, subject_done) {
        // No Subject field to replace: add one.
        let field = subject_field(text);
        let mut added = field;
        added.extend_from_slice(&request.added_headers);
        request.added_headers = added;
    }
    if !settings.add_headers {
        return;
    }
    let additions = answer
        .milter
        .as_ref()
        .map(milter_additions)
        .unwrap_or_default();
    for (name, value) in additions.iter().rev() {
        request.prepend_header(name, value);
    }
    if spam {
        request.prepend_header("X-Spam", "Yes");
    }
    let score = format!("{:.2}", answer.score);
    request.prepend_header("X-Spam-Score", &score);
    request.prepend_header(
        "X-Spam-Status",
        &format!(
            "{}, score={score} required={:.2}",
            if spam { "Yes" } else { "No" },
            answer.required_score
        ),
    );
}

/// `milter.add_headers`: `{"Name": "value"}`, `{"Name": {"value": "v", "order": 0}}` or
/// a list of those per name; malformed entries are skipped.
fn milter_additions(milter: &serde_json::Value) -> Vec<(String, String)> {
    let Some(map) = milter
        .get("add_headers")
        .and_then(serde_json::Value::as_object)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, value) in map {
        if !is_field_name(name) || VERDICT_FIELDS.iter().any(|v| v.eq_ignore_ascii_case(name)) {
            continue;
        }
        let values = match value {
            serde_json::Value::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        for value in values {
            let text = match value {
                serde_json::Value::String(s) => Some(s.as_str()),
                serde_json::Value::Object(o) => o.get("value").and_then(serde_json::Value::as_str),
                _ => None,
            };
            if let Some(text) = text {
                out.push((name.clone(), fold_safe(text)));
            }
        }
    }
    out
}

/// `milter.remove_headers`: `{"Name": n}`, n = 0 for every field of that name, n > 0
/// for the n-th, n < 0 for the n-th from the end.
fn milter_removals(milter: &serde_json::Value) -> Vec<(String, i64)> {
    let Some(map) = milter
        .get("remove_headers")
        .and_then(serde_json::Value::as_object)
    else {
        return Vec::new();
    };
    map.iter()
        .filter_map(|(name, n)| Some((name.clone(), n.as_i64()?)))
        .collect()
}

/// Posts the message to `/checkv2` and reads the answer.
async fn scan(settings: &RspamdSettings, request: &DataRequest) -> Result<Answer, Failure> {
    let io = connect(&settings.address).await?;
    // rspamd reads header names in any case; title case is what its docs show.
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(TokioIo::new(io))
        .await?;
    let http = build(settings, request)?;
    let work = async {
        let response = sender.send_request(http).await?;
        if response.status() != StatusCode::OK {
            return Err(Failure::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(Failure::Body)?
            .to_bytes();
        Ok(serde_json::from_slice::<Answer>(&body)?)
    };
    // The connection is driven here, not in a task of its own: dropping this future
    // (on the timeout) closes the socket.
    let mut work = std::pin::pin!(work);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        biased;
        answer = &mut work => return answer,
        closed = &mut connection => closed?,
    }
    work.await
}

/// The HTTP request: the envelope in rspamd's headers, the message as the body.
fn build(
    settings: &RspamdSettings,
    request: &DataRequest,
) -> Result<Request<MessageBody>, Failure> {
    let session = &request.session;
    let host = match &settings.address {
        RspamdAddress::Http { host, port } if host.contains(':') => format!("[{host}]:{port}"),
        RspamdAddress::Http { host, port } => format!("{host}:{port}"),
        RspamdAddress::Unix(_) => "localhost".into(),
    };
    let body = MessageBody::new([
        Bytes::from(request.added_headers.clone()),
        request.body.bytes().clone(),
    ]);
    let ip = match session.peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let from = request
        .envelope
        .from
        .mailbox()
        .map_or_else(|| "<>".to_owned(), ToString::to_string);
    let mut fields: Vec<(&'static str, String)> = vec![
        ("ip", ip.to_string()),
        // No reverse DNS here: the word Postfix uses for an unresolved client.
        ("hostname", "unknown".into()),
        ("from", from),
    ];
    if let Some(helo) = &session.helo {
        fields.push(("helo", helo.to_string()));
    }
    for rcpt in &request.envelope.recipients {
        let to = match &rcpt.to {
            ForwardPath::Postmaster => "postmaster".to_owned(),
            ForwardPath::Mailbox(m) => m.to_string(),
        };
        fields.push(("rcpt", to));
    }
    if let Some(user) = &session.authenticated {
        fields.push(("user", user.clone()));
    }
    if let Some(tls) = &session.tls {
        fields.push(("tls-version", tls.version.clone()));
        fields.push(("tls-cipher", tls.cipher.clone()));
    }
    if let Some(id) = &settings.settings_id {
        fields.push(("settings-id", id.clone()));
    }
    if let Some(password) = &settings.password {
        fields.push(("password", password.clone()));
    }
    let mut http = Request::builder()
        .method(Method::POST)
        .uri("/checkv2")
        .header(HOST, host)
        .header(USER_AGENT, "mta")
        .header(CONTENT_LENGTH, body.len());
    for (name, value) in fields {
        match HeaderValue::from_bytes(value.as_bytes()) {
            Ok(value) => http = http.header(HeaderName::from_static(name), value),
            Err(_) => warn!(field = name, "a value rspamd cannot be sent, left out"),
        }
    }
    Ok(http.body(body)?)
}

async fn connect(address: &RspamdAddress) -> Result<Box<dyn ServiceStream>, Failure> {
    connect_service(match address {
        RspamdAddress::Http { host, port } => Endpoint::Tcp(host, *port),
        RspamdAddress::Unix(path) => Endpoint::Unix(path),
    })
    .await
    .map_err(Failure::Connect)
}

/// The message as an HTTP body: its parts as they are (a spilled message stays
/// mapped, not copied).
struct MessageBody {
    chunks: VecDeque<Bytes>,
    len: u64,
}

impl MessageBody {
    fn new(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let len = chunks.iter().map(|c| c.len() as u64).sum();
        Self { chunks, len }
    }

    fn len(&self) -> u64 {
        self.len
    }
}

impl Body for MessageBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.chunks.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.chunks.iter().map(|c| c.len() as u64).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let reject: Answer = serde_json::from_str(
            r#"{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject","symbols":{"GTUBE":{"name":"GTUBE","score":0.0}},"messages":{"smtp_message":"Gtube pattern"},"message-id":"undef"}"#,
        )
        .unwrap();
        assert_eq!(reject.action, Action::Reject);
        assert_eq!(
            reject.messages.smtp_message.as_deref(),
            Some("Gtube pattern")
        );
        for (text, action) in [
            ("soft reject", Action::SoftReject),
            ("greylist", Action::Greylist),
            ("add header", Action::AddHeader),
            ("rewrite subject", Action::RewriteSubject),
            ("no action", Action::Pass),
            ("discard", Action::Other),
        ] {
            let answer: Answer =
                serde_json::from_str(&format!(r#"{{"action":"{text}","score":1.5}}"#)).unwrap();
            assert_eq!(answer.action, action, "{text}");
        }
        assert!(
            serde_json::from_str::<Answer>(r#"{"score":1}"#).is_err(),
            "no action"
        );
        assert!(serde_json::from_str::<Answer>("<html>").is_err());
    }

    #[test]
    fn milter_headers_are_read_leniently() {
        let milter = serde_json::json!({
            "add_headers": {
                "X-Spamd-Bar": "+++",
                "X-Rspamd-Server": {"value": "scan1", "order": 0},
                "X-Multi": [{"value": "a\nb"}, "c"],
                "Bad Name": "x",
                "X-Spam": "No",
                "X-Number": 3
            },
            "remove_headers": {"X-Spamd-Bar": 0, "X-Old": -1, "X-Bad": "x"}
        });
        let mut added = milter_additions(&milter);
        added.sort();
        assert_eq!(
            added,
            [
                ("X-Multi".to_owned(), "a\r\n\tb".to_owned()),
                ("X-Multi".to_owned(), "c".to_owned()),
                ("X-Rspamd-Server".to_owned(), "scan1".to_owned()),
                ("X-Spamd-Bar".to_owned(), "+++".to_owned()),
            ]
        );
        let mut removed = milter_removals(&milter);
        removed.sort();
        assert_eq!(
            removed,
            [("X-Old".to_owned(), -1), ("X-Spamd-Bar".to_owned(), 0)]
        );
    }

    #[test]
    fn reply_texts_are_one_short_line() {
        assert_eq!(reply_text("Gtube pattern"), "Gtube pattern");
        assert_eq!(reply_text("one\r\ntwo"), "one");
        assert_eq!(reply_text("a\tb"), "a b");
        assert_eq!(reply_text(&"é".repeat(300)).len(), 400);
    }

    #[test]
    fn bodies_are_sent_as_they_are() {
        let body = MessageBody::new([
            Bytes::new(),
            Bytes::from_static(b"Subject: x\r\n\r\nhi\r\n"),
        ]);
        assert_eq!(body.len(), 18);
        assert_eq!(body.size_hint().exact(), Some(18));
    }
}
