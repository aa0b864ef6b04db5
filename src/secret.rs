//! URLs whose password never reaches `Debug`, `Display`, errors or logs.

use std::fmt;

use serde::{Deserialize, Deserializer};
use url::Url;

/// A connection URL that may hold a password.
///
/// `Debug` and `Display` show it with the password replaced by `***`; only
/// [`expose`](Self::expose) returns the real text, for handing to a driver.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl {
    url: Url,
}

impl SecretUrl {
    /// Parses a URL. The error never repeats the input, since it may hold a password.
    pub fn parse(text: &str) -> Result<Self, String> {
        Url::parse(text)
            .map(|url| Self { url })
            .map_err(|e| format!("not a valid URL ({e})"))
    }

    /// The full URL, password included. Hand it to a driver; never log it.
    pub fn expose(&self) -> &str {
        self.url.as_str()
    }

    /// The URL's scheme, e.g. `postgres` or `amqp`.
    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        let mut shown = self.url.clone();
        if shown.password().is_some() {
            // Infallible for URLs that already carry a password.
            let _ = shown.set_password(Some("***"));
        }
        shown.into()
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_hidden_everywhere_but_expose() {
        let url = SecretUrl::parse("postgres://user:hunter2@db:5432/app").unwrap();
        assert!(!format!("{url} {url:?}").contains("hunter2"));
        assert!(url.to_string().contains("user:***@db"));
        assert!(url.expose().contains("hunter2"));
    }

    #[test]
    fn parse_errors_do_not_echo_the_input() {
        let err = SecretUrl::parse("postgres://user:hunter2@[bad").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
