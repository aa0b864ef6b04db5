//! URLs whose password never reaches `Debug`, `Display`, errors or logs.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

/// A connection URL that may hold a password.
///
/// `Debug`, `Display` and `Serialize` show it with the password (in the user
/// info or a query parameter such as `?password=`) replaced by `***`; only
/// [`expose`](Self::expose) returns the real text, for handing to a driver.
///
/// ```
/// use tasker_messaging::SecretUrl;
///
/// let url: SecretUrl = "postgres://app:hunter2@db/app".parse()?;
/// assert_eq!(url.to_string(), "postgres://app:***@db/app");
/// assert!("not a url".parse::<SecretUrl>().is_err());
/// # Ok::<(), tasker_messaging::InvalidUrl>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl {
    url: Url,
}

/// Text that is not a URL, from [`SecretUrl::parse`] or `str::parse`. Its
/// message says what is wrong without repeating the text, which may hold a
/// password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidUrl {
    reason: url::ParseError,
}

impl fmt::Display for InvalidUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a valid URL ({})", self.reason)
    }
}

impl std::error::Error for InvalidUrl {}

impl From<InvalidUrl> for crate::MessagingError {
    fn from(error: InvalidUrl) -> Self {
        Self::Config(error.to_string())
    }
}

impl SecretUrl {
    /// Parses a URL. The error never repeats the input, since it may hold a password.
    pub fn parse(text: &str) -> Result<Self, InvalidUrl> {
        Url::parse(text)
            .map(|url| Self { url })
            .map_err(|reason| InvalidUrl { reason })
    }

    /// The full URL, password included. Hand it to a driver; never log it.
    pub fn expose(&self) -> &str {
        self.url.as_str()
    }

    /// The URL's scheme, e.g. `postgres` or `amqp`.
    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// The URL with any password replaced by `***`: the user-info password,
    /// and the value of every query parameter whose name (decoded, any case)
    /// contains `password`, `passwd`, `secret` or `token`, such as
    /// `?password=` and `?sslpassword=`, and of `sslkey`/`ssl-key` (a
    /// private key pasted there instead of its path).
    pub fn redacted(&self) -> String {
        let mut shown = self.url.clone();
        if shown.password().is_some() {
            // Infallible for URLs that already carry a password.
            let _ = shown.set_password(Some("***"));
        }
        if let Some(query) = shown.query() {
            let query = redact_query(query);
            shown.set_query(Some(&query));
        }
        shown.into()
    }
}

/// Whether a query parameter's value is a secret: its name (decoded, any
/// case) contains `password`, `passwd`, `secret` or `token`, or is sqlx's
/// `sslkey`/`ssl-key` (a key pasted there instead of its path would show).
fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "passwd", "secret", "token", "sslkey", "ssl-key"]
        .iter()
        .any(|word| name.contains(word))
}

/// `query` with the value of each secret parameter replaced by `***`. The
/// rest is kept as written; names are decoded the way drivers read them
/// (`application/x-www-form-urlencoded`), so `pass%77ord` is caught too.
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            let raw_name = pair.split_once('=').map_or(pair, |(name, _)| name);
            let secret = url::form_urlencoded::parse(raw_name.as_bytes())
                .any(|(name, _)| is_secret_parameter(&name));
            if secret {
                format!("{raw_name}=***")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
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

impl FromStr for SecretUrl {
    type Err = InvalidUrl;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// The redacted text, as `Display` shows it: a serialized configuration
/// never holds a password.
impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
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
    fn query_passwords_are_hidden_everywhere_but_expose() {
        for (text, shown) in [
            (
                "postgres://db/app?password=hunter2",
                "postgres://db/app?password=***",
            ),
            (
                "postgres://u@db/app?sslmode=disable&PassWord=hunter2&x=1",
                "postgres://u@db/app?sslmode=disable&PassWord=***&x=1",
            ),
            (
                "postgres://db/app?sslpassword=hunter2&password=hunter2",
                "postgres://db/app?sslpassword=***&password=***",
            ),
            // Encoded names are read decoded, as sqlx reads them.
            (
                "postgres://db/app?pass%77ord=hunter2",
                "postgres://db/app?pass%77ord=***",
            ),
            (
                "amqp://h/%2f?auth_token=hunter2&db_password_file=hunter2",
                "amqp://h/%2f?auth_token=***&db_password_file=***",
            ),
            (
                "postgres://u:hunter2@db/app?password=hunter2",
                "postgres://u:***@db/app?password=***",
            ),
            // A client key pasted where its path belongs.
            (
                "postgres://db/app?sslkey=-----BEGIN%20hunter2&ssl-key=hunter2",
                "postgres://db/app?sslkey=***&ssl-key=***",
            ),
            // A value holding `=` is hidden whole.
            (
                "postgres://db/app?password=hun=ter2",
                "postgres://db/app?password=***",
            ),
        ] {
            let url = SecretUrl::parse(text).unwrap();
            assert_eq!(url.to_string(), shown);
            assert_eq!(format!("{url:?}"), format!("SecretUrl({shown})"));
            assert_eq!(url.expose(), text);
        }
    }

    #[test]
    fn other_parameters_are_shown_as_written() {
        let text = "postgres://db/app?sslmode=require&application_name=a%20b&options=-c+x%3Dy&flag";
        let url = SecretUrl::parse(text).unwrap();
        assert_eq!(url.to_string(), text);
        assert!(!is_secret_parameter("user"));
        assert!(!is_secret_parameter("passfile"));
    }

    #[test]
    fn parse_errors_do_not_echo_the_input() {
        let err = SecretUrl::parse("postgres://user:hunter2@[bad").unwrap_err();
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err}");
        let err = "postgres://user:hunter2@[bad"
            .parse::<SecretUrl>()
            .unwrap_err();
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err}");
        let err: &dyn std::error::Error = &err;
        assert!(err.to_string().starts_with("not a valid URL"));
    }

    #[test]
    fn serialize_redacts() {
        let url: SecretUrl = "amqp://u:hunter2@h/%2f?password=hunter2".parse().unwrap();
        let json = serde_json::to_string(&url).unwrap();
        assert_eq!(json, r#""amqp://u:***@h/%2f?password=***""#);
    }
}
