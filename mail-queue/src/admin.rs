//! Steering a running queue, what `mta queue` does: hold, release, flush, delete and
//! bounce messages, and the views behind `list` and `summary`.
//!
//! An action claims its messages the way a delivery does (they are "in flight"), so the
//! scheduler and the administrator never change the same message at once. An action on
//! a message that is being delivered waits for the end of that attempt and is applied
//! to what the attempt recorded ([`ActionResult::AfterAttempt`]).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::message::{MessageMeta, RecipientState};
use crate::queue::unix_now;
use crate::store::Change;
use crate::{Queue, QueueError, QueueId};

/// Messages changed per durable commit.
const BATCH: usize = 10_000;

/// What the administrator does to a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Keep it, but do not try to deliver it until it is released.
    Hold,
    /// Undo [`Action::Hold`]: it is tried at once.
    Release,
    /// Try it now instead of at its next attempt.
    Flush,
    /// Remove it without telling anyone.
    Delete,
    /// Give up on its pending recipients: the sender gets a failure notification
    /// (status 5.0.0), then the message leaves the queue.
    Bounce,
}

/// What became of one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionResult {
    /// Done.
    Done,
    /// It is being delivered; the action is applied when that attempt ends.
    AfterAttempt,
    /// Nothing to do, and why (`not held`, `held: release it first`).
    Unchanged(String),
    /// No such message (or it left the queue meanwhile).
    NotFound,
}

/// Where a message stands, as `mta queue list` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageState {
    /// Not tried yet.
    Queued,
    /// Being delivered now.
    Active,
    /// Tried, and waiting for its next attempt.
    Deferred,
    /// On hold.
    Held,
}

/// The upper bounds (in minutes) of the age buckets of [`Summary`], as Postfix's
/// `qshape`; the last bucket holds everything older.
pub const AGE_BUCKETS_MINUTES: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// Counts of messages by destination domain and age, like Postfix's `qshape`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Messages in the queue.
    pub messages: u64,
    /// Their bodies, in octets.
    pub bytes: u64,
    /// Messages by state.
    pub by_state: BTreeMap<String, u64>,
    /// All messages by age bucket ([`AGE_BUCKETS_MINUTES`], then older).
    pub by_age: Vec<u64>,
    /// Per destination domain of the pending recipients (a message with pending
    /// recipients in two domains counts in both).
    pub domains: BTreeMap<String, DomainSummary>,
}

/// One domain's line in a [`Summary`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainSummary {
    /// Messages with pending recipients there.
    pub messages: u64,
    /// Their bodies, in octets.
    pub bytes: u64,
    /// By age bucket.
    pub by_age: Vec<u64>,
}

/// The age bucket of a message received at `received`.
fn age_bucket(now: u64, received: u64) -> usize {
    let minutes = now.saturating_sub(received) / 60;
    AGE_BUCKETS_MINUTES
        .iter()
        .position(|&limit| minutes < limit)
        .unwrap_or(AGE_BUCKETS_MINUTES.len())
}

impl Queue {
    /// Applies `action` to each message (one durable commit for all of them); returns
    /// what became of each, in order.
    ///
    /// ```
    /// # async fn example(queue: mail_queue::Queue, id: mail_queue::QueueId)
    /// #     -> Result<(), mail_queue::QueueError> {
    /// use mail_queue::{Action, ActionResult};
    /// let results = queue.act(&[id], Action::Hold).await?;
    /// assert!(matches!(results[0].1, ActionResult::Done | ActionResult::AfterAttempt));
    /// # Ok(()) }
    /// ```
    pub async fn act(
        &self,
        ids: &[QueueId],
        action: Action,
    ) -> Result<Vec<(QueueId, ActionResult)>, QueueError> {
        let mut results = HashMap::with_capacity(ids.len());
        let mut claimed = Vec::new();
        let mut seen = HashSet::with_capacity(ids.len());
        {
            let mut s = self.inner.schedule.lock().map_err(|_| QueueError::Closed)?;
            for &id in ids {
                if !seen.insert(id) {
                    continue; // named twice
                }
                if s.in_flight.contains(&id) {
                    s.after_flight.insert(id, action);
                    results.insert(id, ActionResult::AfterAttempt);
                    continue;
                }
                let due = s.remove_due(id);
                if due.is_none() && !s.held.remove(&id) {
                    results.insert(id, ActionResult::NotFound);
                    continue;
                }
                s.in_flight.insert(id);
                claimed.push((id, due));
            }
        }
        // In batches, so `--all` on a million messages is not one huge transaction.
        for batch in claimed.chunks(BATCH) {
            results.extend(self.apply_claimed(batch.to_vec(), action).await);
        }
        Ok(ids
            .iter()
            .map(|id| {
                (
                    *id,
                    results.get(id).cloned().unwrap_or(ActionResult::NotFound),
                )
            })
            .collect())
    }

    /// [`Queue::act`] on every message in the queue.
    pub async fn act_all(
        &self,
        action: Action,
    ) -> Result<Vec<(QueueId, ActionResult)>, QueueError> {
        let ids = self
            .inner
            .schedule
            .lock()
            .map_err(|_| QueueError::Closed)?
            .ids();
        self.act(&ids, action).await
    }

    /// Applies `action` to messages this caller has claimed (marked in flight); `due`
    /// is when each was scheduled, kept when the action changes nothing. Gives every
    /// message back to the scheduler (or forgets it) before returning, after applying
    /// any action that another caller queued for it meanwhile.
    pub(crate) async fn apply_claimed(
        &self,
        claimed: Vec<(QueueId, Option<u64>)>,
        action: Action,
    ) -> Vec<(QueueId, ActionResult)> {
        let now = unix_now();
        let mut changes = Vec::new();
        let mut freed = Vec::new(); // spool space of deleted messages
        let mut plan: Vec<Plan> = Vec::with_capacity(claimed.len());
        for (id, due) in claimed {
            let meta = match self.inner.store.get(id) {
                Ok(Some(meta)) => meta,
                Ok(None) => {
                    plan.push(Plan::new(id, ActionResult::NotFound, Place::Gone));
                    continue;
                }
                Err(e) => {
                    let place = Place::Due(due.unwrap_or(now));
                    plan.push(Plan::new(id, ActionResult::Unchanged(e.to_string()), place));
                    continue;
                }
            };
            let before = if meta.is_held() {
                Place::Held
            } else {
                Place::Due(due.unwrap_or(now))
            };
            if action == Action::Delete {
                freed.push(meta.spool);
            }
            let (result, after, change) = decide(meta, action, before, now);
            changes.extend(change);
            plan.push(Plan {
                id,
                result,
                before,
                after,
            });
        }
        if !changes.is_empty() {
            match self.commit(changes).await {
                Ok(()) => freed
                    .iter()
                    .for_each(|spool| self.inner.spool.release(spool)),
                Err(e) => {
                    for p in plan.iter_mut().filter(|p| p.result == ActionResult::Done) {
                        p.result = ActionResult::Unchanged(format!("not recorded: {e}"));
                        p.after = p.before;
                    }
                }
            }
        }
        let done = plan
            .iter()
            .filter(|p| p.result == ActionResult::Done)
            .count();
        info!(action = ?action, messages = done, "queue administration");
        // Give the messages back, except those with an action queued meanwhile.
        let mut queued: Vec<(QueueId, Option<u64>, Action)> = Vec::new();
        if let Ok(mut s) = self.inner.schedule.lock() {
            for p in &plan {
                if let Some(next) = s.after_flight.remove(&p.id) {
                    match p.after {
                        Place::Gone => {}
                        Place::Held => queued.push((p.id, None, next)),
                        Place::Due(at) => queued.push((p.id, Some(at), next)),
                    }
                    if p.after != Place::Gone {
                        continue;
                    }
                }
                s.in_flight.remove(&p.id);
                match p.after {
                    Place::Gone => {}
                    Place::Held => {
                        s.held.insert(p.id);
                    }
                    Place::Due(at) => s.insert_due(at, p.id),
                }
            }
        }
        self.inner.wake.notify_one();
        for (id, due, next) in queued {
            Box::pin(self.apply_claimed(vec![(id, due)], next)).await;
        }
        plan.into_iter().map(|p| (p.id, p.result)).collect()
    }

    /// Where a message stands.
    pub fn state(&self, meta: &MessageMeta) -> MessageState {
        let active = self
            .inner
            .schedule
            .lock()
            .is_ok_and(|s| s.in_flight.contains(&meta.id));
        if active {
            MessageState::Active
        } else if meta.is_held() {
            MessageState::Held
        } else if meta.attempts > 0 {
            MessageState::Deferred
        } else {
            MessageState::Queued
        }
    }

    /// Counts by state, age and destination domain, over the whole queue.
    pub fn summary(&self) -> Result<Summary, QueueError> {
        let now = unix_now();
        let buckets = AGE_BUCKETS_MINUTES.len() + 1;
        let mut summary = Summary {
            by_age: vec![0; buckets],
            ..Summary::default()
        };
        let mut domains: Vec<String> = Vec::new();
        self.scan(None, &mut |meta| {
            let bucket = age_bucket(now, meta.received);
            summary.messages += 1;
            summary.bytes += meta.size();
            summary.by_age[bucket] += 1;
            let state = format!("{:?}", self.state(&meta)).to_ascii_lowercase();
            *summary.by_state.entry(state).or_default() += 1;
            domains.clear();
            domains.extend(
                meta.recipients
                    .iter()
                    .filter(|r| r.state == RecipientState::Pending)
                    .map(|r| r.domain()),
            );
            domains.sort_unstable();
            domains.dedup();
            for domain in &domains {
                let line = summary
                    .domains
                    .entry(domain.clone())
                    .or_insert_with(|| DomainSummary {
                        by_age: vec![0; buckets],
                        ..DomainSummary::default()
                    });
                line.messages += 1;
                line.bytes += meta.size();
                line.by_age[bucket] += 1;
            }
            true
        })?;
        Ok(summary)
    }
}

/// Where a message goes after an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Out of the queue.
    Gone,
    /// On hold.
    Held,
    /// Scheduled at this time.
    Due(u64),
}

/// One claimed message in `apply_claimed`.
struct Plan {
    id: QueueId,
    result: ActionResult,
    before: Place,
    after: Place,
}

impl Plan {
    fn new(id: QueueId, result: ActionResult, place: Place) -> Self {
        Self {
            id,
            result,
            before: place,
            after: place,
        }
    }
}

/// What `action` does to one message that is at `before`: its result, where it goes
/// and the change to record.
fn decide(
    mut meta: MessageMeta,
    action: Action,
    before: Place,
    now: u64,
) -> (ActionResult, Place, Option<Change>) {
    let held = before == Place::Held;
    let unchanged = |why: &str| (ActionResult::Unchanged(why.to_owned()), before, None);
    match action {
        Action::Hold if held => unchanged("already held"),
        Action::Hold => {
            meta.next_attempt = MessageMeta::HELD;
            (ActionResult::Done, Place::Held, Some(Change::Put(meta)))
        }
        Action::Release if !held => unchanged("not held"),
        Action::Release => {
            meta.next_attempt = now;
            (ActionResult::Done, Place::Due(now), Some(Change::Put(meta)))
        }
        Action::Flush if held => unchanged("held: release it first"),
        Action::Flush => (ActionResult::Done, Place::Due(0), None),
        Action::Delete => {
            let id = meta.id;
            (ActionResult::Done, Place::Gone, Some(Change::Remove(id)))
        }
        Action::Bounce => {
            for r in meta
                .recipients
                .iter_mut()
                .filter(|r| r.state == RecipientState::Pending)
            {
                r.state = RecipientState::Failed;
                r.last_reply = Some(format!(
                    "5.0.0 returned to the sender by the postmaster{}",
                    r.last_reply
                        .as_deref()
                        .map(|last| format!(" (last attempt: {last})"))
                        .unwrap_or_default()
                ));
            }
            // Due at once: the scheduler sends the notification and removes it.
            meta.next_attempt = now;
            (ActionResult::Done, Place::Due(0), Some(Change::Put(meta)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_buckets_follow_qshape() {
        let now = 1_000_000;
        assert_eq!(age_bucket(now, now), 0);
        assert_eq!(age_bucket(now, now - 4 * 60 - 59), 0);
        assert_eq!(age_bucket(now, now - 5 * 60), 1);
        assert_eq!(age_bucket(now, now - 1279 * 60), 8);
        assert_eq!(age_bucket(now, now - 1280 * 60), 9);
        assert_eq!(age_bucket(now, now + 10), 0, "a clock step back is age 0");
    }
}
