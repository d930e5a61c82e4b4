//! Sending one request to a running server.

use std::path::Path;

use anyhow::Context;

use super::protocol::{Request, Response};

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
