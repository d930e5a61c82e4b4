//! Postfix SMTPD access policy delegation (`name=value` lines), as a rcpt-stage filter.
