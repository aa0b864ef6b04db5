//! The `sslmode`, `sslrootcert`, `sslcert` and `sslkey` of `pgmq.database_url`:
//! sqlx parses them; here the files are checked before connecting and
//! handshake failures are told from an unreachable server.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::{MessagingError, Provider, SecretUrl};

/// The URL parameters (with sqlx's aliases) that name a PEM file, and the
/// environment variable that stands in for each, as in libpq.
const FILE_PARAMETERS: [(&str, &[&str], &str); 3] = [
    (
        "sslrootcert",
        &["sslrootcert", "ssl-root-cert", "ssl-ca"],
        "PGSSLROOTCERT",
    ),
    ("sslcert", &["sslcert", "ssl-cert"], "PGSSLCERT"),
    ("sslkey", &["sslkey", "ssl-key"], "PGSSLKEY"),
];

/// `url`'s connect options. A named certificate or key file that cannot be
/// read is a `Config` error naming the parameter (sqlx would only fail at
/// connect, as a transient I/O error). As in libpq, `sslmode=require` with a
/// root certificate verifies the server against it (sqlx would ignore it).
pub(super) fn connect_options(url: &SecretUrl) -> Result<PgConnectOptions, MessagingError> {
    let bad = |why: String| MessagingError::Config(format!("pgmq.database_url {why}: {url}"));
    let options = PgConnectOptions::from_str(url.expose())
        .map_err(|_| bad("is not a PostgreSQL URL".into()))?;
    let parsed = url::Url::parse(url.expose()).map_err(|_| bad("is not a URL".into()))?;
    let mut root_given = false;
    for (name, aliases, env) in FILE_PARAMETERS {
        let in_url = parsed
            .query_pairs()
            .filter(|(key, _)| aliases.contains(&key.as_ref()))
            .map(|(_, value)| (name.to_owned(), value.into_owned()))
            .last();
        let given = in_url.or_else(|| std::env::var(env).ok().map(|v| (env.to_owned(), v)));
        let Some((source, path)) = given else {
            continue;
        };
        root_given |= name == "sslrootcert";
        // sqlx takes inline PEM too; only paths are checked.
        if !path.trim_start().starts_with("-----BEGIN") {
            std::fs::File::open(&path)
                .map_err(|e| bad(format!("{source}={path} cannot be read ({e})")))?;
        }
    }
    Ok(match options.get_ssl_mode() {
        PgSslMode::Require if root_given => options.ssl_mode(PgSslMode::VerifyCa),
        _ => options,
    })
}

/// Whether `error` is a failed TLS handshake or TLS setup: the server's
/// certificate refused, ours refused, or no TLS where `sslmode` demands it.
pub(super) fn is_tls_failure(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Tls(_) => true,
        sqlx::Error::Io(io) => io
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>()),
        _ => false,
    }
}

/// `error` as a [`MessagingError::Tls`] with `message`.
pub(super) fn tls_error(message: String, error: sqlx::Error) -> MessagingError {
    let hint = match &error {
        sqlx::Error::Io(io) if io.to_string().contains("invalid peer certificate") => {
            ": the server's certificate is not trusted (see sslrootcert and sslmode)"
        }
        _ => "",
    };
    MessagingError::Tls {
        provider: Provider::Pgmq,
        message: format!("{message}{hint}: {error}"),
        source: Some(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> SecretUrl {
        SecretUrl::parse(text).unwrap()
    }

    #[test]
    fn unreadable_files_are_config_errors_naming_the_parameter() {
        for param in ["sslrootcert", "sslcert", "sslkey"] {
            let error = connect_options(&url(&format!(
                "postgres://u:hunter2@h/db?sslmode=verify-ca&{param}=/nonexistent/x.pem"
            )))
            .err()
            .unwrap();
            let text = error.to_string();
            assert!(matches!(error, MessagingError::Config(_)), "{text}");
            assert!(
                text.contains(&format!("{param}=/nonexistent/x.pem")),
                "{text}"
            );
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn require_with_a_root_certificate_verifies_it_as_libpq_does() {
        let cert = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
        let with_root = format!("postgres://h/db?sslmode=require&sslrootcert={cert}");
        let options = connect_options(&url(&with_root)).unwrap();
        assert!(matches!(options.get_ssl_mode(), PgSslMode::VerifyCa));
        let options = connect_options(&url("postgres://h/db?sslmode=require")).unwrap();
        assert!(matches!(options.get_ssl_mode(), PgSslMode::Require));
        let options = connect_options(&url("postgres://h/db?sslmode=verify-full")).unwrap();
        assert!(matches!(options.get_ssl_mode(), PgSslMode::VerifyFull));
    }

    #[test]
    fn handshake_failures_are_told_from_io_failures() {
        let bad_cert = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, bad_cert);
        assert!(is_tls_failure(&sqlx::Error::Io(io)));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!is_tls_failure(&sqlx::Error::Io(refused)));
        assert!(is_tls_failure(&sqlx::Error::Tls(
            "server does not support TLS".into()
        )));
    }
}
