//! The conversation with one milter over one socket: negotiation, then commands and
//! their responses, every wait bounded by a timeout.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tracing::debug;

use super::MilterError;
use super::protocol::{Actions, Command, Decoder, MacroStage, Response, Steps, VERSION};
use crate::filters::{Endpoint, ServiceStream, connect_service};

/// The largest packet we take from a milter: a body chunk or a header is at most 64 KiB
/// with libmilter; room for milters that send more.
const MAX_PACKET: usize = 1024 * 1024;

/// Where a milter listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Address {
    /// `inet:host:port` (or sendmail's `inet:port@host`).
    Inet { host: String, port: u16 },
    /// `unix:/path` (or `local:/path`, or a bare absolute path).
    Unix(std::path::PathBuf),
}

impl Address {
    /// Parses Postfix's and sendmail's forms.
    pub(crate) fn parse(s: &str) -> Result<Self, MilterError> {
        let bad = || MilterError::Address(s.to_owned());
        if let Some(path) = s
            .strip_prefix("unix:")
            .or_else(|| s.strip_prefix("local:"))
            .or_else(|| s.starts_with('/').then_some(s))
        {
            return if path.is_empty() {
                Err(bad())
            } else {
                Ok(Self::Unix(path.into()))
            };
        }
        let rest = s
            .strip_prefix("inet:")
            .or_else(|| s.strip_prefix("inet6:"))
            .ok_or_else(bad)?;
        let (host, port) = match rest.split_once('@') {
            Some((port, host)) => (host, port),
            None => rest.rsplit_once(':').ok_or_else(bad)?,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self::Inet {
            host: host.to_owned(),
            port,
        })
    }

    async fn connect(&self) -> std::io::Result<Box<dyn ServiceStream>> {
        connect_service(match self {
            Self::Inet { host, port } => Endpoint::Tcp(host, *port),
            Self::Unix(path) => Endpoint::Unix(path),
        })
        .await
    }
}

/// What the milter agreed to in negotiation.
#[derive(Clone, Debug, Default)]
pub(crate) struct Negotiated {
    /// The actions it may take.
    pub(crate) actions: Actions,
    /// The steps it asked for.
    pub(crate) steps: Steps,
    /// The macros it wants per stage (names without braces); `None`: ours.
    pub(crate) macros: [Option<Vec<String>>; 7],
}

/// An open conversation with a milter.
pub(crate) struct Conversation {
    socket: Option<Box<dyn ServiceStream>>,
    decoder: Decoder,
    out: Vec<u8>,
    /// What was negotiated.
    pub(crate) negotiated: Negotiated,
}

impl std::fmt::Debug for Conversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversation")
            .field("negotiated", &self.negotiated)
            .finish_non_exhaustive()
    }
}

impl Conversation {
    /// Connects (within `connect_timeout`) and negotiates (within `timeout`).
    pub(crate) async fn open(
        address: &Address,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, MilterError> {
        let socket = tokio::time::timeout(connect_timeout, address.connect())
            .await
            .map_err(|_| MilterError::Timeout("connect"))?
            .map_err(MilterError::Connect)?;
        let mut conversation = Self {
            socket: Some(socket),
            decoder: Decoder::new(MAX_PACKET),
            out: Vec::new(),
            negotiated: Negotiated::default(),
        };
        let offer = Command::Negotiate {
            version: VERSION,
            actions: Actions::ALL,
            steps: Steps::OFFERED,
        };
        let response = conversation.ask(offer, true, timeout).await?;
        let Some(Response::Negotiate {
            version,
            actions,
            steps,
            macros,
        }) = response
        else {
            return Err(MilterError::Unexpected("negotiation"));
        };
        if !(2..=VERSION).contains(&version) {
            return Err(MilterError::Version(version));
        }
        if steps.0 & !Steps::OFFERED.0 != 0 {
            debug!(
                steps = steps.0,
                "milter asks for steps we do not offer: ignored"
            );
        }
        let mut negotiated = Negotiated {
            actions: Actions(actions.0 & Actions::ALL.0),
            steps: Steps(steps.0 & Steps::OFFERED.0),
            macros: Default::default(),
        };
        for (stage, list) in macros {
            if let Some(slot) = negotiated.macros.get_mut(stage as usize) {
                *slot = Some(
                    list.split([' ', ','])
                        .filter(|n| !n.is_empty())
                        .map(|n| n.trim_start_matches('{').trim_end_matches('}').to_owned())
                        .collect(),
                );
            }
        }
        debug!(
            version,
            actions = negotiated.actions.0,
            steps = negotiated.steps.0,
            "milter negotiated"
        );
        conversation.negotiated = negotiated;
        Ok(conversation)
    }

    /// Sends macros for a stage: those the milter asked for, or all of ours.
    pub(crate) async fn macros(
        &mut self,
        stage: MacroStage,
        macros: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<(), MilterError> {
        let wanted = &self.negotiated.macros[stage as usize];
        let macros: Vec<_> = match wanted {
            None => macros,
            Some(names) => macros
                .into_iter()
                .filter(|(name, _)| {
                    let bare = name.trim_start_matches('{').trim_end_matches('}');
                    names.iter().any(|n| n == bare)
                })
                .collect(),
        };
        if macros.is_empty() {
            return Ok(());
        }
        self.ask(
            Command::Macros {
                stage,
                macros: &macros,
            },
            false,
            timeout,
        )
        .await
        .map(|_| ())
    }

    /// Sends a command and, when `reply` is set, waits for its final response (a
    /// progress report starts the timeout again; a modification is a protocol error
    /// here).
    pub(crate) async fn ask(
        &mut self,
        command: Command<'_>,
        reply: bool,
        timeout: Duration,
    ) -> Result<Option<Response>, MilterError> {
        self.send(command, timeout).await?;
        if !reply {
            return Ok(None);
        }
        let mut deadline = Instant::now() + timeout;
        loop {
            match self.read(deadline).await? {
                Response::Progress => deadline = Instant::now() + timeout,
                r if r.is_final() => return Ok(Some(r)),
                _ => return Err(MilterError::Unexpected("modification before end of body")),
            }
        }
    }

    /// Sends end of body and collects the modifications, then the final response; the
    /// replacement body is bounded by `max_body`.
    pub(crate) async fn end_of_body(
        &mut self,
        timeout: Duration,
        max_body: usize,
    ) -> Result<(Vec<Response>, Response), MilterError> {
        self.send(Command::EndOfBody, timeout).await?;
        let mut deadline = Instant::now() + timeout;
        let mut modifications = Vec::new();
        let mut body = 0usize;
        loop {
            match self.read(deadline).await? {
                Response::Progress => deadline = Instant::now() + timeout,
                Response::Skip | Response::Negotiate { .. } => {
                    return Err(MilterError::Unexpected("end of body"));
                }
                r if r.is_final() => return Ok((modifications, r)),
                r => {
                    if let Response::ReplaceBody(chunk) = &r {
                        body += chunk.len();
                        if body > max_body {
                            return Err(MilterError::BodyTooLarge);
                        }
                    }
                    modifications.push(r);
                }
            }
        }
    }

    /// Encodes and writes a command.
    pub(crate) async fn send(
        &mut self,
        command: Command<'_>,
        timeout: Duration,
    ) -> Result<(), MilterError> {
        self.out.clear();
        command.encode(&mut self.out)?;
        let socket = self.socket.as_mut().ok_or(MilterError::Closed)?;
        let out = &self.out;
        tokio::time::timeout(timeout, async {
            socket.write_all(out).await?;
            socket.flush().await
        })
        .await
        .map_err(|_| MilterError::Timeout("write"))?
        .map_err(MilterError::Io)
    }

    /// The next response, before `deadline`.
    async fn read(&mut self, deadline: Instant) -> Result<Response, MilterError> {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(response) = self.decoder.next_response()? {
                return Ok(response);
            }
            let socket = self.socket.as_mut().ok_or(MilterError::Closed)?;
            let n = tokio::time::timeout_at(deadline, socket.read(&mut buf))
                .await
                .map_err(|_| MilterError::Timeout("response"))?
                .map_err(MilterError::Io)?;
            if n == 0 {
                return Err(MilterError::Closed);
            }
            self.decoder.push(&buf[..n]);
        }
    }
}

impl Drop for Conversation {
    /// Says QUIT (in the background, briefly) so the milter frees the connection at once.
    fn drop(&mut self) {
        let Some(mut socket) = self.socket.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut quit = Vec::new();
        if Command::Quit.encode(&mut quit).is_err() {
            return;
        }
        runtime.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let _ = socket.write_all(&quit).await;
                let _ = socket.shutdown().await;
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::Address;

    #[test]
    fn addresses_in_postfix_and_sendmail_forms() {
        let inet = |h: &str, p| Address::Inet {
            host: h.into(),
            port: p,
        };
        assert_eq!(
            Address::parse("inet:127.0.0.1:8891").unwrap(),
            inet("127.0.0.1", 8891)
        );
        assert_eq!(
            Address::parse("inet:8891@localhost").unwrap(),
            inet("localhost", 8891)
        );
        assert_eq!(
            Address::parse("inet6:[::1]:8891").unwrap(),
            inet("::1", 8891)
        );
        assert_eq!(
            Address::parse("unix:/run/m.sock").unwrap(),
            Address::Unix("/run/m.sock".into())
        );
        assert_eq!(
            Address::parse("/run/m.sock").unwrap(),
            Address::Unix("/run/m.sock".into())
        );
        for bad in [
            "",
            "inet:",
            "inet:host",
            "inet:host:port",
            "unix:",
            "tcp:1.2.3.4:1",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }
}
