//! Carrying out a request on the queue ([`handle`]), and serving the control and
//! sendmail sockets.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use mail_queue::{MessageState, Queue, QueueId};
use smtp_server::smtp_proto::{
    Body, Envelope, ForwardPath, MailParameters, Notify, RcptParameters, Recipient, Ret,
    ReversePath,
};
use smtp_server::{Content, EnhancedStatus, Notes, Reply, ReplyCode, SessionInfo, Stages};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::serve::QueuedAs;

use super::protocol::{Filter, InjectDsn, MessageView, REQUEST_OVERHEAD, Request, Response, Tally};

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

/// What requests need from the server besides the queue.
#[derive(Clone)]
pub struct Hooks {
    /// `None` when the command opened the queue itself.
    pub reload: Option<ReloadFn>,
    /// The stage chain injected mail goes through, as SMTP mail does (the server's:
    /// a reload replaces it).
    pub stages: Arc<RwLock<Stages>>,
    /// The largest message accepted (`[limits] max_message_size`).
    pub max_message: u64,
}

/// Carries out one request on `queue`; `user` (`userid 1000`) is who asked.
pub async fn handle(queue: &Queue, request: Request, hooks: &Hooks, user: &str) -> Response {
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
        } => inject(hooks, from, recipients, dsn, message, user).await,
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

/// Passes a message handed in by local `user` through the stages, as the session of a
/// login ([`SessionInfo::local`]): the relay policy, local recipients, `Received:`,
/// signing, the configured hooks and custom filters, and the queue at their end.
async fn inject(
    hooks: &Hooks,
    from: String,
    recipients: Vec<String>,
    dsn: InjectDsn,
    message: Vec<u8>,
    user: &str,
) -> Response {
    if message.len() as u64 > hooks.max_message {
        return refused(Reply::new(
            ReplyCode::EXCEEDED_STORAGE,
            EnhancedStatus::MESSAGE_TOO_BIG,
            format!(
                "Message size exceeds fixed maximum message size ({} bytes)",
                hooks.max_message
            ),
        ));
    }
    let envelope = match envelope(&from, &recipients, &dsn, &message) {
        Ok(envelope) => envelope,
        Err(e) => return error(e),
    };
    let Ok(stages) = hooks.stages.read().map(|s| s.clone()) else {
        return error("the server's filters are unavailable");
    };
    let notes = Notes::default();
    let decided = stages
        .submit(
            SessionInfo::local(user),
            envelope,
            Content::from(message),
            notes.clone(),
        )
        .await;
    match decided {
        Ok(decision) if decision.is_accept() => match notes.get::<QueuedAs>() {
            Some(QueuedAs(id)) => {
                tracing::info!(queue_id = %id, user, "message accepted");
                Response::Queued { id: id.to_string() }
            }
            None => {
                tracing::info!(user, "message accepted and discarded by a filter");
                Response::Queued {
                    id: "(discarded)".to_owned(),
                }
            }
        },
        Ok(decision) => match decision.reply() {
            Some(reply) => refused(reply.clone()),
            None => error("refused"),
        },
        Err(e) => refused(Reply::new(
            ReplyCode::LOCAL_ERROR,
            EnhancedStatus::SYSTEM_TEMPORARY,
            format!("Local error in processing ({e}); try again later"),
        )),
    }
}

fn refused(reply: Reply) -> Response {
    Response::Refused {
        code: reply.code().as_u16(),
        message: reply.to_string(),
    }
}

/// The envelope of an injected message, as SMTP would have carried it.
fn envelope(
    from: &str,
    recipients: &[String],
    dsn: &InjectDsn,
    message: &[u8],
) -> Result<Envelope, String> {
    let from = match from {
        "" | "<>" => ReversePath::Null,
        from => ReversePath::parse(&format!("<{from}>"))
            .map_err(|e| format!("invalid sender {from:?}: {e}"))?,
    };
    // 1 success, 2 failure, 4 delay (see InjectDsn::notify).
    let notify = dsn.notify.map(|bits| {
        [
            (1, Notify::SUCCESS),
            (2, Notify::FAILURE),
            (4, Notify::DELAY),
        ]
        .into_iter()
        .filter(|(bit, _)| bits & bit != 0)
        .fold(Notify::NEVER, |all, (_, one)| all.union(one))
    });
    let recipients = recipients
        .iter()
        .map(|to| {
            let to = ForwardPath::parse(&format!("<{to}>"))
                .map_err(|e| format!("invalid recipient {to:?}: {e}"))?;
            Ok(Recipient {
                to,
                params: RcptParameters {
                    notify,
                    orcpt: None,
                },
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let smtputf8 =
        !from.to_string().is_ascii() || recipients.iter().any(|r| !r.to.to_string().is_ascii());
    let params = MailParameters {
        body: Some(if message.is_ascii() {
            Body::SevenBit
        } else {
            Body::EightBitMime
        }),
        smtputf8,
        ret: dsn
            .ret
            .map(|headers| if headers { Ret::Headers } else { Ret::Full }),
        envid: dsn.envid.clone(),
        ..MailParameters::default()
    };
    Ok(Envelope {
        from,
        params,
        recipients,
    })
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
    shutdown: impl std::future::Future<Output = ()>,
) {
    // A message of the largest size the server accepts, in base64, fits in a request;
    // a larger one is refused by its size once read.
    let max_request = hooks.max_message.saturating_mul(4) / 3 + REQUEST_OVERHEAD;
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
    let user = uid.map_or_else(|| "unknown user".to_owned(), |u| format!("userid {u}"));
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, max_request));
    tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line))
        .await
        .context("no request within 30 s")??;
    let response = match (serde_json::from_str::<Request>(&line), access) {
        (Ok(request), Access::Owner) => handle(queue, request, hooks, &user).await,
        (Ok(request @ Request::Inject { .. }), Access::Anyone { .. }) => {
            handle(queue, request, hooks, &user).await
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue in `dir`, and hooks that do not reload, with the chain of a server on a
    /// minimal configuration.
    fn open(dir: &Path) -> (Queue, Hooks) {
        let text = format!(
            "hostname = \"mx.test\"\n[[listener]]\naddress = \"127.0.0.1:0\"\nmode = \"relay\"\n[queue]\npath = \"{}\"\n",
            dir.join("queue").display()
        );
        let config = crate::config::Config::parse(&text).unwrap();
        let queue = Queue::open(crate::serve::queue_config(&config)).unwrap();
        let stages =
            crate::serve::local_stages(&config, &queue, &crate::MtaBuilder::new()).unwrap();
        let hooks = Hooks {
            reload: None,
            stages: Arc::new(RwLock::new(stages)),
            max_message: 1 << 20,
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
        let Response::Queued { id } = handle(&queue, request, &hooks, "userid 0").await else {
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

    /// Injected mail meets the chain: a message over the size limit is refused as SMTP
    /// would refuse it, and what is queued has the `Received:` of local mail.
    #[tokio::test]
    async fn injected_mail_goes_through_the_stages() {
        let dir = tempfile::tempdir().unwrap();
        let (queue, mut hooks) = open(dir.path());
        hooks.max_message = 100;
        let inject = |size: usize| Request::Inject {
            from: "me@x.test".into(),
            recipients: vec!["a@y.test".into()],
            message: [b"Subject: s\r\n\r\n".as_slice(), &vec![b'x'; size], b"\r\n"].concat(),
            dsn: InjectDsn::default(),
        };
        let Response::Refused { code, message } =
            handle(&queue, inject(200), &hooks, "userid 7").await
        else {
            panic!("not refused");
        };
        assert_eq!(code, 552);
        assert!(message.starts_with("552 5.3.4 "), "{message}");
        let Response::Queued { id } = handle(&queue, inject(10), &hooks, "userid 7").await else {
            panic!("not queued");
        };
        let id = id.parse().unwrap();
        let meta = queue.get(id).unwrap().unwrap();
        assert_eq!(meta.source, "local userid 7");
        let stored = String::from_utf8(queue.read_body(&meta).unwrap().to_vec()).unwrap();
        assert!(
            stored.starts_with("Received: by mx.test (mta, from userid 7);\r\n\t"),
            "{stored}"
        );
    }

    /// The sendmail socket serves `max_connections` at once: one more waits until a
    /// connection ends, then gets its answer. Control requests are refused there.
    #[tokio::test]
    async fn the_sendmail_socket_bounds_its_connections() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let (queue, hooks) = open(dir.path());
        let path = dir.path().join("sendmail.sock");
        let access = Access::Anyone { max_connections: 1 };
        let listener = listen(&path, &access).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            queue.clone(),
            (listener, path.clone()),
            access,
            hooks,
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
        assert!(meta.source.starts_with("local userid "), "{}", meta.source);
        let _ = stop.send(());
        server.await.unwrap();
    }
}
