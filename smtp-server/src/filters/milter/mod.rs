//! Milter: the Sendmail/Postfix mail filter protocol (version 6), as a stage filter.
