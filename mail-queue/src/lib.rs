//! # mail-queue
//!
//! The durable mail queue of the `mta` workspace. Its promise: [`Queue::enqueue`]
//! returns only when the message's body and metadata are on stable storage, so a server
//! may answer `250` to DATA; after a crash every acknowledged message is found again
//! and scheduled.
//!
//! ```text
//!  enqueue(msg, body) ──▶ group committer ──▶ spool segment (bodies and a journal
//!        ▲                     │          │                  record of the metadata,
//!        │                     │          │                  one fdatasync per batch)
//!        │                     │          └─▶ QueueStore    (metadata, synced ~1/s)
//!        └──── Ok(queue id) ◀──┘  per batch: every session finishing at the same time
//!                                 shares the fsync
//!
//!  Queue::run(delivery) ──▶ due messages ──▶ one DeliveryRequest per domain ──▶ your
//!                                            tower Service ──▶ Outcome per recipient
//!                                            (delivered / deferred / failed)
//! ```
//!
//! - Bodies live in append-only segment files ([`spool`](crate) internals), never in
//!   the metadata store.
//! - Metadata lives behind [`QueueStore`]: [`SledStore`] (default; sled 0.34 plus an
//!   explicit fsync of its log after each flush) and [`RedbStore`].
//! - Deliveries are a tower `Service<DeliveryRequest>`; the queue knows no SMTP and no
//!   DNS. Temporary failures are retried by `retry_intervals` until `max_age`.
//!
//! The durability contract is written out in `docs/durability.md`.

#![deny(unsafe_code)]

mod admin;
mod commit;
#[cfg(feature = "conformance")]
pub mod conformance;
mod delivery;
pub mod dsn;
mod error;
mod id;
mod journal;
mod message;
mod queue;
mod spool;
mod stats;
mod store;

pub use admin::{AGE_BUCKETS_MINUTES, Action, ActionResult, DomainSummary, MessageState, Summary};
/// Message bodies are shared as `Bytes` (in memory, or a spool file mapped into memory).
pub use bytes::Bytes;
pub use commit::CommitStats;
pub use delivery::{BoxError, DeliveryReport, DeliveryRequest, Outcome};
pub use error::QueueError;
pub use id::QueueId;
pub use message::{
    BodyType, MailParams, MessageMeta, NewMessage, NewRecipient, RecipientDsn, RecipientMeta,
    RecipientState, SpoolRef,
};
pub use queue::{Backend, DeliveryService, NotificationRoute, Queue, QueueConfig};
pub use stats::{
    DELAY_BUCKETS, DomainCounts, Histogram, Oldest, QueueCounts, QueueStats, TRACKED_DOMAINS,
};
pub use store::{Change, JournalMark, QueueStore, RedbStore, SledStore};
