//! Logins from `[[account]]`: plain, argon2 (`$argon2id$...`) or SHA-512-crypt (`$6$...`).

use std::collections::HashMap;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use smtp_server::filters::Authenticator;

/// The accounts table.
#[derive(Debug, Default)]
pub struct Accounts {
    by_name: HashMap<String, String>,
}

impl Accounts {
    /// From `(username, password or hash)` pairs; usernames compare case-insensitively.
    pub fn new<'a>(accounts: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let by_name = accounts
            .into_iter()
            .map(|(u, p)| (u.to_lowercase(), p.to_owned()))
            .collect();
        Self { by_name }
    }
}

impl Authenticator for Accounts {
    fn verify(&self, username: &str, password: &str) -> bool {
        let Some(stored) = self.by_name.get(&username.to_lowercase()) else {
            // Spend the same effort as for a real user, so timing does not reveal who exists.
            let _ = constant_time_eq(password.as_bytes(), b"no such user, no such password");
            return false;
        };
        if stored.starts_with("$argon2") {
            PasswordHash::new(stored).is_ok_and(|hash| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &hash)
                    .is_ok()
            })
        } else if stored.starts_with("$6$") {
            sha_crypt::sha512_check(password, stored).is_ok()
        } else {
            constant_time_eq(password.as_bytes(), stored.as_bytes())
        }
    }
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (x, y) in a.iter().zip(b.iter().cycle()) {
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_hashed() {
        let argon = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$0cjWf9YbaJmu+chTkY0WQmq1AXN6kb4kmVkHjmCoO0c";
        let sha = sha_crypt::sha512_simple("hunter2", &sha_crypt::Sha512Params::new(5000).unwrap())
            .unwrap();
        let accounts = Accounts::new([
            ("Alice@Example.test", "secret"),
            ("bob@example.test", argon),
            ("carol@example.test", sha.as_str()),
        ]);
        assert!(accounts.verify("alice@example.test", "secret"));
        assert!(!accounts.verify("alice@example.test", "secret2"));
        assert!(!accounts.verify("alice@example.test", ""));
        assert!(!accounts.verify("nobody@example.test", "secret"));
        assert!(accounts.verify("carol@example.test", "hunter2"));
        assert!(!accounts.verify("carol@example.test", "hunter3"));
        // The argon2 vector above hashes "password" with salt "saltsaltsalt".
        assert!(!accounts.verify("bob@example.test", "wrong"));
    }
}
