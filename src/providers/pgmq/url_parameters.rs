//! The query parameters of `pgmq.database_url` that sqlx 0.8 reads. sqlx
//! logs any other parameter together with its value (a `warn` event), so
//! those are refused before sqlx sees the URL: a mistyped secret such as
//! `sslpasword=...` must not reach the log.

use crate::MessagingError;

/// The keys sqlx-postgres 0.8.6 reads, aliases included
/// (`PgConnectOptions::parse_from_url`).
const KNOWN: [&str; 18] = [
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// Refuses `sslpassword` and every parameter sqlx would not read, naming
/// the parameter, never its value (nor the URL: its redaction knows only
/// names that say they hold a secret, and a misspelt one may not).
pub(super) fn check(parsed: &url::Url) -> Result<(), MessagingError> {
    for (key, _) in parsed.query_pairs() {
        let key = key.as_ref();
        // `options[name]=value`: one server setting.
        let setting = key.starts_with("options[") && key.ends_with(']');
        if KNOWN.contains(&key) || setting {
            continue;
        }
        let why = match key {
            "sslpassword" => "sslpassword is not supported (encrypted client keys are not)".into(),
            _ => format!("has a parameter sqlx does not know: {key:?}"),
        };
        return Err(MessagingError::Config(format!("pgmq.database_url {why}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(text: &str) -> Result<(), MessagingError> {
        check(&url::Url::parse(text).unwrap())
    }

    #[test]
    fn known_parameters_and_server_settings_pass() {
        let text = "postgres://h/db?sslmode=require&ssl-ca=/x&application_name=a\
                    &options[search_path]=s&statement-cache-capacity=10&hostaddr=127.0.0.1";
        assert!(checked(text).is_ok());
    }

    #[test]
    fn unknown_parameters_are_named_without_their_values() {
        for (text, says) in [
            (
                "postgres://h/db?sslpassword=hunter2",
                "sslpassword is not supported",
            ),
            ("postgres://h/db?sslpasword=hunter2", "\"sslpasword\""),
            ("postgres://h/db?options[x=hunter2", "\"options[x\""),
            (
                "postgres://h/db?connect_timeout=hunter2",
                "\"connect_timeout\"",
            ),
        ] {
            let error = checked(text).unwrap_err();
            let shown = error.to_string();
            assert!(matches!(error, MessagingError::Config(_)), "{shown}");
            assert!(shown.contains(says), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }
}
