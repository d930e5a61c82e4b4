//! The requests and responses of the control socket: one JSON line each way.

use mail_queue::{
    Action, ActionResult, MessageMeta, MessageState, Queue, QueueId, RecipientState, Summary,
};
use serde::{Deserialize, Serialize};

/// What a request line may hold besides a message (ids of many messages fit).
pub(super) const REQUEST_OVERHEAD: u64 = 16 << 20;

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
    pub(super) fn matches(&self, meta: &MessageMeta, state: MessageState, now: u64) -> bool {
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
    pub(super) fn new(queue: &Queue, meta: &MessageMeta, now: u64) -> Self {
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
    /// For `Inject`: a filter refused the message, as it would have over SMTP.
    Refused {
        /// The reply code (`550`, `451`, ...): `4yz` for now, `5yz` for good.
        code: u16,
        /// The reply, `550 5.1.1 User unknown in local recipient table`.
        message: String,
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
    pub(super) fn of(results: Vec<(QueueId, ActionResult)>) -> Self {
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
