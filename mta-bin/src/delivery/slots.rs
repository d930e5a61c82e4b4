//! Delivery slots for one destination, handed out by priority: when a destination is
//! saturated, the next free slot goes to the waiting message of highest priority
//! (RFC 6710), then to the one that has waited longest; a message that has waited
//! `max_wait` goes first whatever its priority (`[queue] priority_max_wait`).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// At most `n` deliveries at once; waiters are served highest priority first.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use mta_bin::delivery::PrioritySlots;
/// let slots = PrioritySlots::new(1);
/// let first = slots.acquire(0).await;
/// drop(first); // the slot goes to the next waiter, or back to the pool
/// let _again = slots.acquire(5).await;
/// # });
/// ```
#[derive(Debug)]
pub struct PrioritySlots {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    free: usize,
    waiting: BinaryHeap<Waiter>,
    next: u64,
    /// A waiter this old is served first; `None`: priority alone.
    max_wait: Option<Duration>,
}

impl State {
    /// The next waiter to serve: the one that arrived first when it has waited
    /// `max_wait`, else the highest priority, then the oldest.
    fn next_waiter(&mut self) -> Option<Waiter> {
        // `seq` is reversed: the largest is the first to arrive.
        let aged = self.max_wait.and_then(|max_wait| {
            let oldest = self.waiting.iter().max_by_key(|w| w.seq)?;
            (oldest.since.elapsed() >= max_wait).then_some(oldest.seq)
        });
        let Some(seq) = aged else {
            return self.waiting.pop();
        };
        // Rare (a waiter held back `max_wait`): the heap is rebuilt without it.
        let mut waiting = std::mem::take(&mut self.waiting).into_vec();
        let chosen = waiting
            .iter()
            .position(|w| w.seq == seq)
            .map(|i| waiting.swap_remove(i));
        self.waiting = BinaryHeap::from(waiting);
        chosen
    }
}

#[derive(Debug)]
struct Waiter {
    priority: i8,
    /// Arrival order: earlier first among equals.
    seq: Reverse<u64>,
    since: Instant,
    grant: oneshot::Sender<Slot>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        (self.priority, self.seq) == (other.priority, other.seq)
    }
}

impl Eq for Waiter {}

impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.priority, self.seq).cmp(&(other.priority, other.seq))
    }
}

/// A held slot; dropping it gives it to the next waiter.
#[derive(Debug)]
pub struct Slot {
    state: Arc<Mutex<State>>,
}

impl PrioritySlots {
    /// `n` slots (at least one).
    pub fn new(n: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                free: n.max(1),
                waiting: BinaryHeap::new(),
                next: 0,
                max_wait: None,
            })),
        }
    }

    /// A waiter that has waited `max_wait` is served before higher priorities (`None`:
    /// priority alone decides).
    pub fn max_wait(self, max_wait: Option<Duration>) -> Self {
        lock(&self.state).max_wait = max_wait;
        self
    }

    /// Waits for a slot for a message of `priority`.
    pub async fn acquire(&self, priority: i8) -> Slot {
        let receiver = {
            let mut state = lock(&self.state);
            if state.free > 0 && state.waiting.is_empty() {
                state.free -= 1;
                return Slot {
                    state: Arc::clone(&self.state),
                };
            }
            let (grant, receiver) = oneshot::channel();
            let seq = Reverse(state.next);
            state.next += 1;
            state.waiting.push(Waiter {
                priority,
                seq,
                since: Instant::now(),
                grant,
            });
            receiver
        };
        match receiver.await {
            Ok(slot) => slot,
            // The sender is only dropped with the whole set of slots: nothing to wait for.
            Err(_) => Slot {
                state: Arc::new(Mutex::new(State {
                    free: 0,
                    waiting: BinaryHeap::new(),
                    next: 0,
                    max_wait: None,
                })),
            },
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        // A waiter that gave up (its future dropped) refuses the slot: try the next.
        // A slot sent to a waiter dropped after the send comes back through this Drop.
        while let Some(waiter) = state.next_waiter() {
            let slot = Slot {
                state: Arc::clone(&self.state),
            };
            match waiter.grant.send(slot) {
                Ok(()) => return,
                Err(refused) => std::mem::forget(refused),
            }
        }
        state.free += 1;
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::PrioritySlots;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_highest_priority_then_the_oldest() {
        let slots = Arc::new(PrioritySlots::new(1));
        let held = slots.acquire(0).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, priority) in [("low", -3), ("a", 0), ("urgent", 6), ("b", 0)] {
            let (slots, order) = (Arc::clone(&slots), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire(priority).await;
                order.lock().unwrap().push(name);
            }));
            // Let it queue before the next, so arrival order is known.
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        drop(held);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["urgent", "a", "b", "low"]);
    }

    /// A waiter that has waited `max_wait` goes before higher priorities.
    #[tokio::test]
    async fn a_waiter_that_waited_max_wait_goes_first() {
        let wait = std::time::Duration::from_millis(200);
        let slots = Arc::new(PrioritySlots::new(1).max_wait(Some(wait)));
        let held = slots.acquire(0).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, priority, after) in [("old-low", -3, 0), ("urgent", 6, 250), ("high", 5, 0)] {
            tokio::time::sleep(std::time::Duration::from_millis(after)).await;
            let (slots, order) = (Arc::clone(&slots), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire(priority).await;
                order.lock().unwrap().push(name);
            }));
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        drop(held);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["old-low", "urgent", "high"]);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_keep_a_slot() {
        let slots = PrioritySlots::new(1);
        let held = slots.acquire(0).await;
        let gave_up =
            tokio::time::timeout(std::time::Duration::from_millis(20), slots.acquire(9)).await;
        assert!(gave_up.is_err());
        drop(held);
        // The slot came back to the pool rather than to the waiter that left.
        let _again = slots.acquire(0).await;
        let second = tokio::time::timeout(std::time::Duration::from_millis(20), slots.acquire(0));
        assert!(second.await.is_err(), "one slot only");
    }
}
