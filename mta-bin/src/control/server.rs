//! Carrying out a request on the queue ([`handle`]), and serving the control and
//! sendmail sockets.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mail_queue::{
    BodyType, MailParams, MessageState, NewMessage, NewRecipient, Queue, QueueId, RecipientDsn,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

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
                smtp_proto::rfc5322_date(std::time::SystemTime::now())
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
