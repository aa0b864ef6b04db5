//! amqps: `[rabbitmq.tls]` as an amqprs `TlsAdaptor`, and telling a failed
//! handshake from an unreachable broker.
//!
//! The client config is built here rather than by amqprs' own constructors:
//! those panic on a key that does not match its certificate and pick the
//! process-wide crypto provider; ours names the config key and uses ring.

use std::{path::Path, sync::Arc};

use amqprs::{connection::OpenConnectionArguments, tls::TlsAdaptor};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    ClientConfig, RootCertStore,
};

use crate::{MessagingError, Provider, RabbitMqTlsConfig};

/// Port of `amqps://host/` without one.
pub(super) const AMQPS_PORT: u16 = 5671;

/// Sets TLS with `tls` on `args` for an `amqps://` node (`wanted`); `host` is
/// the name the broker's certificate must carry. `[rabbitmq.tls]` with an
/// `amqp://` URL is refused, not ignored. `key` and `shown` (the URL,
/// redacted) name the node in errors.
pub(super) fn configure(
    args: &mut OpenConnectionArguments,
    wanted: bool,
    host: &str,
    tls: &RabbitMqTlsConfig,
    key: &str,
    shown: &str,
) -> Result<(), MessagingError> {
    if !wanted {
        return match tls.is_empty() {
            true => Ok(()),
            false => Err(MessagingError::Config(format!(
                "rabbitmq.tls is set but {key} is not amqps://: {shown}"
            ))),
        };
    }
    // rustls refuses such a name only at connect, as a transient error.
    if let Err(e) = ServerName::try_from(host) {
        return Err(MessagingError::Config(format!(
            "{key} has a host that is not a TLS server name ({host:?}: {e}): {shown}"
        )));
    }
    args.tls_adaptor(adaptor(tls, host)?);
    Ok(())
}

/// The adaptor for `tls`, checking the certificate named `host`.
pub(super) fn adaptor(tls: &RabbitMqTlsConfig, host: &str) -> Result<TlsAdaptor, MessagingError> {
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for cert in certificates("rabbitmq.tls.ca_file", path)? {
                roots.add(cert).map_err(|e| {
                    bad_file(
                        "rabbitmq.tls.ca_file",
                        path,
                        &format!("is not a usable CA: {e}"),
                    )
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    // rustls 0.23.48 deprecates ring's provider (no post-quantum key
    // exchange) in favour of aws-lc-rs, which needs cmake and a C toolchain
    // to build; sqlx's PostgreSQL TLS uses the same ring provider.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MessagingError::Config(format!("rabbitmq.tls: {e}")))?
        .with_root_certificates(roots);
    let config = match (&tls.client_cert_file, &tls.client_key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = certificates("rabbitmq.tls.client_cert_file", cert)?;
            let key_der =
                PrivateKeyDer::from_pem_slice(&read("rabbitmq.tls.client_key_file", key)?)
                    .map_err(|_| {
                        bad_file(
                            "rabbitmq.tls.client_key_file",
                            key,
                            "holds no PEM private key",
                        )
                    })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                bad_file(
                    "rabbitmq.tls.client_key_file",
                    key,
                    &format!("does not fit rabbitmq.tls.client_cert_file: {e}"),
                )
            })?
        }
        _ => {
            return Err(MessagingError::Config(
                "rabbitmq.tls.client_cert_file and rabbitmq.tls.client_key_file go together".into(),
            ))
        }
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    Ok(TlsAdaptor::new(connector, host.to_owned()))
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, MessagingError> {
    std::fs::read(path).map_err(|e| bad_file(key, path, &format!("cannot be read: {e}")))
}

/// Every PEM certificate in `path`; none is an error.
fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, MessagingError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_file(key, path, &format!("is not valid PEM: {e}")))?;
    match certs.is_empty() {
        true => Err(bad_file(key, path, "holds no PEM certificate")),
        false => Ok(certs),
    }
}

fn bad_file(key: &str, path: &Path, why: &str) -> MessagingError {
    MessagingError::Config(format!("{key} {} {why}", path.display()))
}

/// What rustls' errors say first (amqprs passes on only their text): the
/// broker's certificate was refused, ours was, or the port does not speak TLS.
const HANDSHAKE_FAILURES: [&str; 8] = [
    "invalid peer certificate",
    // "received unexpected message" and "... unexpected handshake message".
    "received unexpected ",
    "received fatal alert",
    "peer sent no certificates",
    "peer is incompatible",
    "peer misbehaved",
    "received corrupt message",
    "invalid server name",
];

/// A failed `Connection::open`: a [`MessagingError::Tls`] when `tls` was
/// used and the handshake failed, else a transient connection error.
pub(super) fn open_error(
    tls: bool,
    message: String,
    error: amqprs::error::Error,
) -> MessagingError {
    let text = error.to_string();
    if tls && HANDSHAKE_FAILURES.iter().any(|f| text.contains(f)) {
        let hint = if text.contains("invalid peer certificate") {
            "the broker's certificate is not trusted (see rabbitmq.tls.ca_file)"
        } else if text.contains("received fatal alert") {
            "the broker refused the TLS handshake (see rabbitmq.tls.client_cert_file)"
        } else {
            "the TLS handshake failed"
        };
        return MessagingError::Tls {
            provider: Provider::RabbitMq,
            message: format!("{message}: {hint}: {text}"),
            source: Some(Box::new(error)),
        };
    }
    super::errors::connection(format!("{message}: {text}"), Some(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// rustls' error as it reaches us through amqprs (io, then text).
    fn through_amqprs(error: rustls::Error) -> amqprs::error::Error {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, error);
        amqprs::error::Error::NetworkError(io.to_string())
    }

    #[test]
    fn handshake_failures_are_tls_errors_others_are_transient() {
        use rustls::{AlertDescription, CertificateError};
        for failure in [
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
            rustls::Error::NoCertificatesPresented,
            rustls::Error::InappropriateMessage {
                expect_types: vec![rustls::ContentType::Handshake],
                got_type: rustls::ContentType::ApplicationData,
            },
            rustls::Error::InappropriateHandshakeMessage {
                expect_types: vec![rustls::HandshakeType::ServerHello],
                got_type: rustls::HandshakeType::Finished,
            },
        ] {
            let error = open_error(true, "connecting".into(), through_amqprs(failure));
            assert!(matches!(error, MessagingError::Tls { .. }), "{error}");
            assert!(!error.is_transient(), "{error}");
        }
        let refused = amqprs::error::Error::NetworkError("Connection refused".into());
        let error = open_error(true, "connecting".into(), refused);
        assert!(matches!(error, MessagingError::Connection { .. }) && error.is_transient());
        let plain = through_amqprs(rustls::Error::NoCertificatesPresented);
        let error = open_error(false, "connecting".into(), plain);
        assert!(
            matches!(error, MessagingError::Connection { .. }),
            "{error}"
        );
    }

    #[test]
    fn a_host_rustls_cannot_check_is_a_config_error_naming_the_key() {
        let tls = RabbitMqTlsConfig::default();
        let mut args = OpenConnectionArguments::new("h", 5671, "u", "p");
        let error = configure(
            &mut args,
            true,
            "loc%61lhost",
            &tls,
            "rabbitmq.url",
            "shown",
        )
        .err()
        .unwrap();
        assert!(matches!(error, MessagingError::Config(_)), "{error}");
        assert!(error.to_string().contains("rabbitmq.url"), "{error}");
        assert!(error.to_string().contains("loc%61lhost"), "{error}");
        for host in ["localhost", "127.0.0.1", "::1", "rabbit-mq.example"] {
            configure(&mut args, true, host, &tls, "rabbitmq.url", "shown").unwrap();
        }
    }

    #[test]
    fn unreadable_or_invalid_files_name_their_key() {
        let dir = std::env::temp_dir().join(format!("tm-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let missing = dir.join("missing.pem");
        let cases = [
            (
                RabbitMqTlsConfig::new().ca_file(&missing),
                "rabbitmq.tls.ca_file",
            ),
            (
                RabbitMqTlsConfig::new().ca_file(&junk),
                "rabbitmq.tls.ca_file",
            ),
            (
                RabbitMqTlsConfig::new().client_auth(&junk, &missing),
                "rabbitmq.tls.client_cert_file",
            ),
        ];
        for (tls, key) in cases {
            let error = adaptor(&tls, "localhost").err().unwrap();
            assert!(matches!(error, MessagingError::Config(_)), "{error}");
            assert!(error.to_string().contains(key), "{error}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
        let half = RabbitMqTlsConfig {
            client_cert_file: Some(junk),
            ..RabbitMqTlsConfig::default()
        };
        let error = adaptor(&half, "localhost").err().unwrap();
        assert!(error.to_string().contains("go together"), "{error}");
        // No ca_file: the bundled roots.
        assert!(adaptor(&RabbitMqTlsConfig::default(), "localhost").is_ok());
    }
}
