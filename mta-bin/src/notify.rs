//! systemd's readiness protocol (`sd_notify`): one datagram to the socket
//! `$NOTIFY_SOCKET` names, when systemd runs `mta serve` as a `Type=notify` service.

/// Tells the service manager `state` (`READY=1`, `STOPPING=1`, ...); does nothing when
/// no manager listens. A failure is logged, never fatal: the server runs either way.
///
/// ```
/// // Outside systemd (no NOTIFY_SOCKET) this is a no-op.
/// mta_bin::notify::notify("READY=1");
/// ```
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        tracing::warn!(error = %e, socket = ?path, "cannot notify the service manager");
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<usize> {
    use std::os::unix::ffi::OsStrExt;
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    match path.as_bytes().strip_prefix(b"@") {
        // An abstract socket (Linux): "@name".
        #[cfg(target_os = "linux")]
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &address)
        }
        _ => socket.send_to(state.as_bytes(), path),
    }
}
