//! rspamd over its HTTP protocol (`/checkv2`), as a data-stage filter.
