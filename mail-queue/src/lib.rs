//! # mail-queue
//!
//! The durable mail queue of the `mta` workspace. Its promise: a message is acknowledged
//! (`250` to DATA) only after its body and metadata are on stable storage, and concurrent
//! sessions share one fsync (group commit). Storage sits behind a `QueueStore` trait,
//! with sled as the default backend.
//!
//! Status: not built yet; it arrives with the inbound MTA work.
