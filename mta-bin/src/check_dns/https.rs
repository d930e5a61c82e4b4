//! The one HTTPS request `mta check-dns` makes: GET of an MTA-STS policy (RFC 8461
//! §3.3) over rustls, from an address found in DNS, with the certificate checked for
//! the name, no redirects followed, a size limit and a deadline. A blocking client,
//! run on tokio's blocking threads: one request needs no more.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;

/// The largest policy read (RFC 8461 §3.3 lets senders stop at 64 KiB).
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// The largest response header read.
const MAX_HEADER: usize = 16 * 1024;

/// A response.
#[derive(Debug)]
pub(crate) struct Response {
    /// The status code.
    pub(crate) status: u16,
    /// The `Content-Type` field, if any.
    pub(crate) content_type: Option<String>,
    /// The `Location` field, if any (of a redirect).
    pub(crate) location: Option<String>,
    /// The body (chunked transfer decoded).
    pub(crate) body: Vec<u8>,
}

/// Why there is no response.
#[derive(Debug)]
pub(crate) enum FetchError {
    /// The deadline passed.
    TimedOut,
    /// Anything else, said for a person.
    Failed(String),
}

/// GETs `path` from `host` (for SNI, the certificate and `Host:`) at `addresses` (tried
/// in turn) on `port`, all within `timeout`.
pub(crate) fn get(
    host: &str,
    addresses: &[IpAddr],
    port: u16,
    path: &str,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Response, FetchError> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(FetchError::TimedOut)
    };
    let mut last = FetchError::Failed("no address".to_owned());
    let mut connected = None;
    for ip in addresses {
        match TcpStream::connect_timeout(&SocketAddr::new(*ip, port), left()?) {
            Ok(stream) => {
                connected = Some(stream);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => last = FetchError::TimedOut,
            Err(e) => last = FetchError::Failed(format!("cannot connect to {ip} port {port}: {e}")),
        }
    }
    let Some(tcp) = connected else {
        return Err(last);
    };
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| FetchError::Failed(format!("{host:?}: {e}")))?;
    let connection = rustls::ClientConnection::new(tls, name)
        .map_err(|e| FetchError::Failed(format!("TLS: {e}")))?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => FetchError::TimedOut,
        _ => FetchError::Failed(e.to_string()),
    };
    stream.sock.set_write_timeout(Some(left()?)).map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mta-check-dns\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    stream.flush().map_err(io)?;
    let mut received = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        stream.sock.set_read_timeout(Some(left()?)).map_err(io)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                received.extend_from_slice(&buf[..n]);
                if received.len() > MAX_HEADER + MAX_BODY + 1024 {
                    break;
                }
                if let Some(done) = complete(&received)
                    && done
                {
                    break;
                }
            }
            // A server that closes without close_notify: what came is judged as it is.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io(e)),
        }
    }
    parse(&received)
}

/// Whether `received` holds a whole response whose length its header gives (`None`:
/// the header is not complete yet, or the body runs to the end of the connection).
fn complete(received: &[u8]) -> Option<bool> {
    let end = find(received, b"\r\n\r\n")?;
    let header = String::from_utf8_lossy(&received[..end]);
    let length = field(&header, "content-length")?.parse::<usize>().ok()?;
    Some(received.len() >= end + 4 + length)
}

fn parse(received: &[u8]) -> Result<Response, FetchError> {
    let Some(end) = find(received, b"\r\n\r\n") else {
        return Err(FetchError::Failed(if received.len() > MAX_HEADER {
            "the response header is too long".to_owned()
        } else {
            "no complete HTTP response".to_owned()
        }));
    };
    let header = String::from_utf8_lossy(&received[..end]);
    let status_line = header.lines().next().unwrap_or_default();
    let mut words = status_line.split_ascii_whitespace();
    let status = match (words.next(), words.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(code))) if version.starts_with("HTTP/1.") => code,
        _ => {
            return Err(FetchError::Failed(format!(
                "not an HTTP response: {status_line:?}"
            )));
        }
    };
    let raw = &received[end + 4..];
    let chunked = field(&header, "transfer-encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        unchunk(raw)?
    } else {
        match field(&header, "content-length").map(|l| l.parse::<usize>()) {
            Some(Ok(length)) if length > MAX_BODY => {
                return Err(FetchError::Failed(format!(
                    "the policy is {length} bytes, over the 64 KiB senders read"
                )));
            }
            Some(Ok(length)) if raw.len() < length => {
                return Err(FetchError::Failed(format!(
                    "the connection closed after {} of {length} bytes",
                    raw.len()
                )));
            }
            Some(Ok(length)) => raw[..length].to_vec(),
            _ => raw.to_vec(),
        }
    };
    if body.len() > MAX_BODY {
        return Err(FetchError::Failed(
            "the policy is over the 64 KiB senders read".to_owned(),
        ));
    }
    Ok(Response {
        status,
        content_type: field(&header, "content-type").map(str::to_owned),
        location: field(&header, "location").map(str::to_owned),
        body,
    })
}

/// The value of a header field (the first of that name).
fn field<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn unchunk(mut raw: &[u8]) -> Result<Vec<u8>, FetchError> {
    let bad = || FetchError::Failed("bad chunked encoding".to_owned());
    let mut body = Vec::new();
    loop {
        let line_end = find(raw, b"\r\n").ok_or_else(bad)?;
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad())?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if size > MAX_BODY || body.len() + size > MAX_BODY {
            return Err(FetchError::Failed(
                "the policy is over the 64 KiB senders read".to_owned(),
            ));
        }
        let chunk = raw.get(..size).ok_or_else(bad)?;
        body.extend_from_slice(chunk);
        raw = raw.get(size + 2..).ok_or_else(bad)?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_parsed() {
        let r =
            parse(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello")
                .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(r.content_type.as_deref(), Some("text/plain"));
        let r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"hello");
        let r = parse(b"HTTP/1.0 301 Moved\r\nLocation: https://x/\r\n\r\n").unwrap();
        assert_eq!((r.status, r.location.as_deref()), (301, Some("https://x/")));
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello").is_err());
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        let huge = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(parse(huge.as_bytes()).is_err());
        assert_eq!(
            complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nh"),
            Some(false)
        );
        assert_eq!(
            complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"),
            Some(true)
        );
    }
}
