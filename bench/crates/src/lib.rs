//! Benchmarks only: see `benches/smtp_proto.rs`.
