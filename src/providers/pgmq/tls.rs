//! The `sslmode`, `sslrootcert`, `sslcert` and `sslkey` of `pgmq.database_url`:
//! sqlx parses them; here their files are checked before connecting and
//! handshake failures are told from an unreachable server.

use std::str::FromStr;

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    RootCertStore,
};
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

/// `url`'s connect options. Parameters sqlx does not know are refused
/// first (it would log their values). Each named certificate or key must be
/// a readable regular file (or inline PEM) holding what its name says, and
/// `sslcert` and `sslkey` go together: else a `Config` error naming the
/// parameter (sqlx would only fail at connect). As in libpq,
/// `sslmode=require` with a root certificate verifies the server against
/// it (sqlx would ignore it), and a Unix socket never uses TLS.
pub(super) fn connect_options(url: &SecretUrl) -> Result<PgConnectOptions, MessagingError> {
    let bad = |why: String| MessagingError::Config(format!("pgmq.database_url {why}: {url}"));
    let parsed = url::Url::parse(url.expose()).map_err(|_| bad("is not a URL".into()))?;
    super::url_parameters::check(&parsed)?;
    let options = PgConnectOptions::from_str(url.expose())
        .map_err(|_| bad("is not a PostgreSQL URL".into()))?;
    let mut given = [false; 3];
    for (index, (name, aliases, env)) in FILE_PARAMETERS.into_iter().enumerate() {
        let in_url = parsed
            .query_pairs()
            .filter(|(key, _)| aliases.contains(&key.as_ref()))
            .map(|(_, value)| (name.to_owned(), value.into_owned()))
            .last();
        let value = in_url.or_else(|| std::env::var(env).ok().map(|v| (env.to_owned(), v)));
        let Some((source, value)) = value else {
            continue;
        };
        given[index] = true;
        check_pem(name, &source, &value, source != name).map_err(bad)?;
    }
    let [root_given, cert_given, key_given] = given;
    if cert_given != key_given {
        return Err(bad(
            "sets only one of sslcert and sslkey; they go together".into()
        ));
    }
    Ok(match options.get_ssl_mode() {
        _ if options.get_socket().is_some() => options.ssl_mode(PgSslMode::Disable),
        PgSslMode::Require if root_given => options.ssl_mode(PgSslMode::VerifyCa),
        _ => options,
    })
}

/// Checks the `value` of `name` (given as `source`, an environment
/// variable when `from_env`): a path, or inline PEM where sqlx takes it (in
/// the environment only; from the URL it reads a file name), holding
/// certificates (`sslrootcert`, `sslcert`) or a private key (`sslkey`).
/// The error names a path, never PEM.
fn check_pem(name: &str, source: &str, value: &str, from_env: bool) -> Result<(), String> {
    if name == "sslrootcert" && value == "system" {
        return Err(format!(
            "{source}=system is not supported; leave sslrootcert unset to use the bundled roots"
        ));
    }
    let trimmed = value.trim();
    let looks_inline = trimmed.starts_with("-----BEGIN");
    let (shown, pem) = match (looks_inline, from_env && trimmed.ends_with("-----")) {
        (_, true) => (format!("{source} (inline PEM)"), value.as_bytes().to_vec()),
        (true, false) => {
            return Err(format!(
                "{source} holds PEM text, which sqlx 0.8 takes only from the \
                 environment; name a file instead"
            ))
        }
        (false, false) => {
            let shown = format!("{source}={value}");
            let meta =
                std::fs::metadata(value).map_err(|e| format!("{shown} cannot be read ({e})"))?;
            if !meta.is_file() {
                return Err(format!("{shown} is not a regular file"));
            }
            let pem = std::fs::read(value).map_err(|e| format!("{shown} cannot be read ({e})"))?;
            (shown, pem)
        }
    };
    if name == "sslkey" {
        // pem::Error's text is left out: it could quote the key.
        return PrivateKeyDer::from_pem_slice(&pem)
            .map(drop)
            .map_err(|_| format!("{shown} holds no PEM private key"));
    }
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown} is not valid PEM ({e})"))?;
    if certs.is_empty() {
        return Err(format!("{shown} holds no PEM certificate"));
    }
    if name == "sslrootcert" {
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("{shown} is not a usable root certificate ({e})"))?;
        }
    }
    Ok(())
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
    fn inline_pem_is_checked_from_the_environment_and_refused_in_the_url() {
        let cert = std::fs::read_to_string("/etc/ssl/certs/ssl-cert-snakeoil.pem").unwrap();
        assert_eq!(
            check_pem("sslrootcert", "PGSSLROOTCERT", &cert, true),
            Ok(())
        );
        assert_eq!(check_pem("sslcert", "PGSSLCERT", &cert, true), Ok(()));
        let error = check_pem("sslkey", "PGSSLKEY", &cert, true).unwrap_err();
        assert_eq!(error, "PGSSLKEY (inline PEM) holds no PEM private key");
        let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----";
        let error = check_pem("sslrootcert", "PGSSLROOTCERT", junk, true).unwrap_err();
        assert!(
            error.contains("is not a usable root certificate"),
            "{error}"
        );
        let error = check_pem("sslkey", "sslkey", &cert, false).unwrap_err();
        assert!(error.contains("takes only from the environment"), "{error}");
        assert!(!error.contains("BEGIN"), "{error}");
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
