//! The queue control socket: how `mta queue ...` steers a running `mta serve`, and
//! how `mta sendmail` hands it a message.
//!
//! `mta serve` listens on a Unix socket in the queue directory (`control.sock`, mode
//! 0600: its owner and root only). A client sends one [`Request`] as a JSON line and
//! reads one [`Response`] as a JSON line. When no server is running, `mta queue` opens
//! the queue itself and runs the same [`handle`] (the queue's lock keeps the two from
//! ever opening it at once).
//!
//! With `[sendmail] socket` configured, the server also listens there (mode 0666) for
//! [`Request::Inject`] alone, from any local user, whose user id it records in a
//! `Received` field and in the message's source.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mail_queue::{
    Action, ActionResult, BodyType, MailParams, MessageMeta, MessageState, NewMessage,
    NewRecipient, Queue, QueueId, RecipientDsn, RecipientState, Summary,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// What a request line may hold besides a message (ids of many messages fit).
const REQUEST_OVERHEAD: u64 = 16 << 20;

/// `Vec<u8>` as a base64 string in JSON (a message for `Inject`).
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::Deserialize;

    pub(super) fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// The socket of the queue at `queue_path`.
pub fn socket_path(queue_path: &Path) -> PathBuf {
    queue_path.join("control.sock")
}

/// Which messages `list` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// A pending recipient in this domain (case-insensitive).
    pub domain: Option<String>,
    /// The sender contains this (case-insensitive; `<>` for the null sender).
    pub sender: Option<String>,
    /// In this state.
    pub state: Option<MessageState>,
    /// At least this old, in seconds.
    pub min_age: Option<u64>,
}

impl Filter {
    fn matches(&self, meta: &MessageMeta, state: MessageState, now: u64) -> bool {
        let domain_ok = self.domain.as_ref().is_none_or(|d| {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            meta.recipients
                .iter()
                .any(|r| r.state == RecipientState::Pending && r.domain() == d)
        });
        let sender_ok = self.sender.as_ref().is_none_or(|s| {
            let s = s.to_ascii_lowercase();
            if meta.from.is_empty() {
                s == "<>"
            } else {
                meta.from.to_ascii_lowercase().contains(&s)
            }
        });
        domain_ok
            && sender_ok
            && self.state.is_none_or(|s| s == state)
            && self
                .min_age
                .is_none_or(|age| now.saturating_sub(meta.received) >= age)
    }
}

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Messages matching a filter, oldest first, at most `limit`.
    List {
        /// Which messages.
        filter: Filter,
        /// At most this many.
        limit: Option<usize>,
    },
    /// One message; with its body when `body`.
    Show {
        /// The queue id.
        id: String,
        /// Include the whole message, not only its header.
        body: bool,
    },
    /// An action on messages: those named, every message (`all`), or those with a
    /// pending recipient in `domain`.
    Act {
        /// What to do.
        action: Action,
        /// Queue ids.
        ids: Vec<String>,
        /// Every message in the queue.
        all: bool,
        /// Messages with a pending recipient in this domain.
        domain: Option<String>,
    },
    /// Counts by state, age and destination domain.
    Summary,
    /// Reload the server's configuration file (`mta reload`).
    Reload,
    /// Queue a message (`mta sendmail`): durable when the answer comes.
    Inject {
        /// The envelope sender; empty for `<>`.
        from: String,
        /// The recipients.
        recipients: Vec<String>,
        /// The message, CRLF line endings (base64 in the JSON line).
        #[serde(with = "base64_bytes")]
        message: Vec<u8>,
        /// Delivery status notifications asked for (sendmail's `-N`, `-R`, `-V`).
        #[serde(default)]
        dsn: InjectDsn,
    },
}

/// The DSN parameters (RFC 3461) of an injected message: the same for every recipient.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectDsn {
    /// `NOTIFY` bits (1 success, 2 failure, 4 delay; 0 never); `None`: the default
    /// (failure, and delay when the queue warns).
    pub notify: Option<u8>,
    /// `RET`: `Some(true)` to return headers only, `Some(false)` the full message.
    pub ret: Option<bool>,
    /// `ENVID`: the sender's id for this transaction, quoted in notifications.
    pub envid: Option<String>,
}

/// One recipient as shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientView {
    /// The address.
    pub address: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// The last reply or error for it.
    pub last_reply: Option<String>,
}

/// One message as shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    /// The queue id.
    pub id: String,
    /// Where it stands.
    pub state: MessageState,
    /// When it was accepted (Unix seconds).
    pub received: u64,
    /// Its age in seconds.
    pub age: u64,
    /// The body size in octets.
    pub size: u64,
    /// The reverse-path (empty for `<>`).
    pub from: String,
    /// Who handed it over.
    pub source: String,
    /// The recipients.
    pub recipients: Vec<RecipientView>,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When it is tried next (Unix seconds); none while held.
    pub next_attempt: Option<u64>,
    /// The last error.
    pub last_error: Option<String>,
}

impl MessageView {
    fn new(queue: &Queue, meta: &MessageMeta, now: u64) -> Self {
        Self {
            id: meta.id.to_string(),
            state: queue.state(meta),
            received: meta.received,
            age: now.saturating_sub(meta.received),
            size: meta.size(),
            from: meta.from.clone(),
            source: meta.source.clone(),
            recipients: meta
                .recipients
                .iter()
                .map(|r| RecipientView {
                    address: r.address.clone(),
                    state: format!("{:?}", r.state).to_ascii_lowercase(),
                    last_reply: r.last_reply.clone(),
                })
                .collect(),
            attempts: meta.attempts,
            next_attempt: (!meta.is_held()).then_some(meta.next_attempt),
            last_error: meta.last_error.clone(),
        }
    }
}

/// What the server answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// For `List`: the messages, and how many matched in all.
    Messages {
        /// The messages shown.
        messages: Vec<MessageView>,
        /// How many matched (more than shown when a limit cut the list).
        matched: u64,
    },
    /// For `Show`.
    Message {
        /// The message.
        message: MessageView,
        /// Its header (or the whole message), as stored.
        content: String,
    },
    /// For `Act`: per message, what became of it.
    Results {
        /// `(queue id, result)`.
        results: Vec<(String, ActionResult)>,
    },
    /// For `Act` on every message or a domain's: how many each result.
    Tally {
        /// The counts.
        tally: Tally,
    },
    /// For `Summary`.
    Summary {
        /// The counts.
        summary: Summary,
    },
    /// For `Reload`: the new configuration is in force.
    Reloaded,
    /// For `Inject`: the message is in the queue.
    Queued {
        /// Its queue id.
        id: String,
    },
    /// The request could not be carried out.
    Error {
        /// Why.
        message: String,
    },
}

/// What an action did to many messages.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Changed.
    pub done: u64,
    /// Being delivered: changed when the attempt ends.
    pub after_attempt: u64,
    /// Left as they were, by reason.
    pub unchanged: std::collections::BTreeMap<String, u64>,
    /// Gone meanwhile.
    pub not_found: u64,
}

impl Tally {
    fn of(results: Vec<(QueueId, ActionResult)>) -> Self {
        let mut t = Self::default();
        for (_, result) in results {
            match result {
                ActionResult::Done => t.done += 1,
                ActionResult::AfterAttempt => t.after_attempt += 1,
                ActionResult::Unchanged(why) => *t.unchanged.entry(why).or_insert(0) += 1,
                ActionResult::NotFound => t.not_found += 1,
            }
        }
        t
    }
}

fn parse_id(id: &str) -> Result<QueueId, String> {
    id.trim()
        .parse()
        .map_err(|_| format!("{id:?} is not a queue id (16 hexadecimal digits)"))
}

fn error(message: impl Into<String>) -> Response {
    Response::Error {
        message: message.into(),
    }
}

/// Reloads the server's configuration; an error says why it did not.
pub type ReloadFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// A `DKIM-Signature` field for an injected message, when a key applies.
pub type SignFn = Arc<dyn Fn(&[u8]) -> Option<String> + Send + Sync>;

/// What requests need from the server besides the queue.
#[derive(Clone)]
pub struct Hooks {
    /// `None` when the command opened the queue itself.
    pub reload: Option<ReloadFn>,
    /// Signs injected mail.
    pub sign: SignFn,
}

/// Carries out one request on `queue`.
pub async fn handle(queue: &Queue, request: Request, hooks: &Hooks) -> Response {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match request {
        Request::List { filter, limit } => {
            let limit = limit.unwrap_or(usize::MAX);
            let mut messages = Vec::new();
            let mut matched = 0u64;
            let scanned = queue.scan(None, &mut |meta| {
                let state = queue.state(&meta);
                if filter.matches(&meta, state, now) {
                    matched += 1;
                    if messages.len() < limit {
                        messages.push(MessageView::new(queue, &meta, now));
                    }
                }
                // Without a filter the count is the queue's length: stop at the limit.
                filter != Filter::default() || messages.len() < limit
            });
            if filter == Filter::default() {
                matched = matched.max(queue.len() as u64);
            }
            match scanned {
                Ok(()) => Response::Messages { messages, matched },
                Err(e) => error(e.to_string()),
            }
        }
        Request::Show { id, body } => {
            let id = match parse_id(&id) {
                Ok(id) => id,
                Err(e) => return error(e),
            };
            let meta = match queue.get(id) {
                Ok(Some(meta)) => meta,
                Ok(None) => return error(format!("no message {id} in the queue")),
                Err(e) => return error(e.to_string()),
            };
            let bytes = match queue.read_body(&meta) {
                Ok(bytes) => bytes,
                Err(e) => return error(e.to_string()),
            };
            let end = if body {
                bytes.len()
            } else {
                header_end(&bytes)
            };
            Response::Message {
                message: MessageView::new(queue, &meta, now),
                content: String::from_utf8_lossy(&bytes[..end]).into_owned(),
            }
        }
        Request::Act {
            action,
            ids,
            all,
            domain,
        } => {
            let many = all || domain.is_some();
            let result = if all {
                queue.act_all(action).await
            } else if let Some(domain) = domain {
                let filter = Filter {
                    domain: Some(domain),
                    ..Filter::default()
                };
                let mut matching = Vec::new();
                let scanned = queue.scan(None, &mut |meta| {
                    if filter.matches(&meta, MessageState::Queued, now) {
                        matching.push(meta.id);
                    }
                    true
                });
                match scanned {
                    Ok(()) => queue.act(&matching, action).await,
                    Err(e) => Err(e),
                }
            } else {
                let parsed: Result<Vec<QueueId>, String> =
                    ids.iter().map(|i| parse_id(i)).collect();
                match parsed {
                    Ok(ids) => queue.act(&ids, action).await,
                    Err(e) => return error(e),
                }
            };
            match result {
                // Many messages: counts, as postsuper prints them (a million lines
                // would help no one).
                Ok(results) if many => Response::Tally {
                    tally: Tally::of(results),
                },
                Ok(results) => Response::Results {
                    results: results
                        .into_iter()
                        .map(|(id, r)| (id.to_string(), r))
                        .collect(),
                },
                Err(e) => error(e.to_string()),
            }
        }
        Request::Inject {
            from,
            recipients,
            message,
            dsn,
        } => {
            let envelope = Envelope {
                from,
                recipients,
                dsn,
            };
            inject(queue, hooks, envelope, message, "local").await
        }
        Request::Reload => match &hooks.reload {
            Some(reload) => match reload() {
                Ok(()) => Response::Reloaded,
                Err(e) => error(e),
            },
            None => error("no server is running"),
        },
        Request::Summary => match queue.summary() {
            Ok(summary) => Response::Summary { summary },
            Err(e) => error(e.to_string()),
        },
    }
}

/// The envelope of an injected message.
struct Envelope {
    from: String,
    recipients: Vec<String>,
    dsn: InjectDsn,
}

/// Queues a message handed in by `source`, signed with the configured keys as mail
/// from a login would be (the signing layer runs on SMTP sessions only).
async fn inject(
    queue: &Queue,
    hooks: &Hooks,
    envelope: Envelope,
    message: Vec<u8>,
    source: &str,
) -> Response {
    let Envelope {
        from,
        recipients,
        dsn,
    } = envelope;
    let params = MailParams {
        body: if message.is_ascii() {
            BodyType::SevenBit
        } else {
            BodyType::EightBitMime
        },
        smtputf8: !from.is_ascii() || recipients.iter().any(|r| !r.is_ascii()),
        ret: dsn.ret,
        envid: dsn.envid,
        ..MailParams::default()
    };
    let new = NewMessage {
        from,
        params,
        recipients: recipients
            .into_iter()
            .map(|address| NewRecipient {
                address,
                dsn: RecipientDsn {
                    notify: dsn.notify,
                    orcpt: None,
                },
            })
            .collect(),
        source: source.to_owned(),
    };
    let message = match (hooks.sign)(&message) {
        Some(header) => [header.into_bytes(), message].concat(),
        None => message,
    };
    match queue.enqueue(new, message).await {
        Ok(id) => {
            tracing::info!(queue_id = %id, source, "message accepted");
            Response::Queued { id: id.to_string() }
        }
        Err(e) => error(e.to_string()),
    }
}

/// The length of the header section, its blank line included.
fn header_end(message: &[u8]) -> usize {
    if message.starts_with(b"\r\n") {
        return 2;
    }
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |i| i + 4)
}

/// Who may use a socket.
#[derive(Clone, Debug)]
pub enum Access {
    /// The control socket: the server's user and root, every request (mode 0600).
    Owner,
    /// The `[sendmail] socket`: any local user, [`Request::Inject`] only (mode 0666).
    Anyone {
        /// Our host name, for the `Received` field that records the user.
        hostname: String,
        /// Connections served at once (each may carry a message of the largest size);
        /// more wait in the socket's backlog.
        max_connections: usize,
    },
}

/// Binds the socket at `path` for `access` (replacing one left by a server that died).
#[cfg(unix)]
pub fn listen(path: &Path, access: &Access) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    // A socket left by a server that died: nobody answers on it any more.
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    let mode = match access {
        Access::Owner => 0o600,
        Access::Anyone { .. } => 0o666,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Serves requests on `listener` (bound at `path` by [`listen`]) until `shutdown`
/// completes, then removes the socket.
#[cfg(unix)]
pub async fn serve(
    queue: Queue,
    (listener, path): (tokio::net::UnixListener, PathBuf),
    access: Access,
    hooks: Hooks,
    max_message: u64,
    shutdown: impl std::future::Future<Output = ()>,
) {
    // A message of the largest size the server accepts, in base64, fits in a request.
    let max_request = max_message.saturating_mul(4) / 3 + REQUEST_OVERHEAD;
    // Any local user can reach the sendmail socket: bound what their connections hold.
    let permits = Arc::new(tokio::sync::Semaphore::new(match &access {
        Access::Owner => tokio::sync::Semaphore::MAX_PERMITS,
        Access::Anyone {
            max_connections, ..
        } => (*max_connections).max(1),
    }));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let (queue, hooks, access) = (queue.clone(), hooks.clone(), access.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(&queue, &hooks, &access, max_request, stream).await {
                tracing::warn!(error = %e, "control socket");
            }
        });
    }
    let _ = std::fs::remove_file(&path);
}

#[cfg(unix)]
async fn connection(
    queue: &Queue,
    hooks: &Hooks,
    access: &Access,
    max_request: u64,
    stream: tokio::net::UnixStream,
) -> anyhow::Result<()> {
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, max_request));
    tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line))
        .await
        .context("no request within 30 s")??;
    let response = match (serde_json::from_str::<Request>(&line), access) {
        (Ok(request), Access::Owner) => handle(queue, request, hooks).await,
        (
            Ok(Request::Inject {
                from,
                recipients,
                message,
                dsn,
            }),
            Access::Anyone { hostname, .. },
        ) => {
            let uid = uid.map_or_else(|| "unknown".to_owned(), |u| u.to_string());
            let received = format!(
                "Received: by {hostname} (mta sendmail socket, from userid {uid});\r\n\t{}\r\n",
                smtp_proto::rfc5322_date(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs())
                )
            );
            let message = [received.into_bytes(), message].concat();
            let source = format!("local uid {uid}");
            let envelope = Envelope {
                from,
                recipients,
                dsn,
            };
            inject(queue, hooks, envelope, message, &source).await
        }
        (Ok(_), Access::Anyone { .. }) => {
            error("this socket takes messages only; queue control needs the control socket")
        }
        (Err(e), _) => error(format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await?;
    Ok(())
}

/// Sends `request` to the server on `socket`; `Ok(None)` when no server listens there.
#[cfg(unix)]
pub fn request(socket: &Path, request: &Request) -> anyhow::Result<Option<Response>> {
    use std::io::{BufRead, Write};
    let mut stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot connect to {}", socket.display())),
    };
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reader = std::io::BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    let response = serde_json::from_str(&answer)
        .with_context(|| format!("unreadable answer from {}", socket.display()))?;
    Ok(Some(response))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue in `dir`, and hooks that neither reload nor sign.
    fn open(dir: &Path) -> (Queue, Hooks) {
        let queue = Queue::open(mail_queue::QueueConfig {
            path: dir.join("queue"),
            ..mail_queue::QueueConfig::default()
        })
        .unwrap();
        let hooks = Hooks {
            reload: None,
            sign: Arc::new(|_: &[u8]| None),
        };
        (queue, hooks)
    }

    /// sendmail's `-N`, `-R` and `-V` reach the queued envelope.
    #[tokio::test]
    async fn injected_mail_keeps_its_dsn_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let (queue, hooks) = open(dir.path());
        let request = Request::Inject {
            from: "me@x.test".into(),
            recipients: vec!["a@y.test".into(), "b@y.test".into()],
            message: b"Subject: s\r\n\r\nbody\r\n".to_vec(),
            dsn: InjectDsn {
                notify: Some(0),
                ret: Some(true),
                envid: Some("job-42".into()),
            },
        };
        // Through JSON, as over the socket.
        let request: Request =
            serde_json::from_str(&serde_json::to_string(&request).unwrap()).unwrap();
        let Response::Queued { id } = handle(&queue, request, &hooks).await else {
            panic!("not queued");
        };
        let meta = queue.get(id.parse().unwrap()).unwrap().unwrap();
        assert_eq!(meta.params.ret, Some(true));
        assert_eq!(meta.params.envid.as_deref(), Some("job-42"));
        assert!(meta.recipients.iter().all(|r| r.dsn.notify == Some(0)));
        // A request without `dsn` (an older client) still parses, with the defaults.
        let old = r#"{"op":"inject","from":"","recipients":["a@y.test"],"message":"eA=="}"#;
        let Ok(Request::Inject { dsn, .. }) = serde_json::from_str::<Request>(old) else {
            panic!("does not parse");
        };
        assert_eq!(dsn, InjectDsn::default());
    }

    /// The sendmail socket serves `max_connections` at once: one more waits until a
    /// connection ends, then gets its answer. Control requests are refused there.
    #[tokio::test]
    async fn the_sendmail_socket_bounds_its_connections() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let (queue, hooks) = open(dir.path());
        let path = dir.path().join("sendmail.sock");
        let access = Access::Anyone {
            hostname: "mx.test".into(),
            max_connections: 1,
        };
        let listener = listen(&path, &access).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            queue.clone(),
            (listener, path.clone()),
            access,
            hooks,
            1 << 20,
            async move {
                let _ = stopped.await;
            },
        ));
        let ask = |request: &Request| {
            let mut line = serde_json::to_vec(request).unwrap();
            line.push(b'\n');
            let path = path.clone();
            async move {
                let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
                stream.write_all(&line).await.unwrap();
                let mut answer = String::new();
                stream.read_to_string(&mut answer).await.unwrap();
                serde_json::from_str::<Response>(&answer).unwrap()
            }
        };
        let refused = ask(&Request::Summary).await;
        assert!(matches!(refused, Response::Error { .. }), "{refused:?}");

        // A connection that says nothing holds the only place.
        let idle = tokio::net::UnixStream::connect(&path).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let inject = Request::Inject {
            from: "me@x.test".into(),
            recipients: vec!["a@y.test".into()],
            message: b"Subject: s\r\n\r\nbody\r\n".to_vec(),
            dsn: InjectDsn::default(),
        };
        let mut waiting = tokio::spawn(ask(&inject));
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut waiting)
                .await
                .is_err(),
            "served while the only place is taken"
        );
        assert!(queue.is_empty());
        drop(idle);
        let Response::Queued { id } = waiting.await.unwrap() else {
            panic!("not queued");
        };
        let meta = queue.get(id.parse().unwrap()).unwrap().unwrap();
        assert!(meta.source.starts_with("local uid "), "{}", meta.source);
        let _ = stop.send(());
        server.await.unwrap();
    }
}
