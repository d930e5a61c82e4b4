//! What both benchmarks share: criterion settings for this 2-core machine.

use std::time::Duration;

use criterion::Criterion;

/// Short enough for a 2-core machine; the command line (`--measurement-time`,
/// `--warm-up-time`, `--sample-size`) still overrides these.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
}
