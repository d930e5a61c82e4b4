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

//!
//! | file | holds |
//! | --- | --- |
//! | `protocol.rs` | the requests and responses (their JSON shape) |
//! | `server.rs` | carrying out a request on the queue, and serving the sockets |
//! | `client.rs` | sending a request (`mta queue`, `mta sendmail`, `mta reload`) |

use std::path::{Path, PathBuf};

mod client;
mod protocol;
mod server;

#[cfg(unix)]
pub use client::request;
pub use protocol::{Filter, InjectDsn, MessageView, RecipientView, Request, Response, Tally};
pub use server::{Access, Hooks, ReloadFn, handle};
#[cfg(unix)]
pub use server::{listen, serve};

/// The socket of the queue at `queue_path`.
pub fn socket_path(queue_path: &Path) -> PathBuf {
    queue_path.join("control.sock")
}
