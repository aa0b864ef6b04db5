//! `tasker-messaging`: look at queues and operate on them from a shell, with
//! the library's configuration. `tasker-messaging --help` lists the commands;
//! the README's "Operations CLI" section is the reference.

mod args;
mod commands;

use std::process::ExitCode;

use args::{Command, USAGE};
use tasker_messaging::{
    MessageBackend, MessagingConfig, MessagingError, MessagingService, Provider,
};

/// Why a command failed, and so its exit code.
pub enum Failure {
    /// An operation failed (exit 1).
    Failed(String),
    /// The command line is wrong (exit 2).
    Usage(String),
    /// The configuration is invalid (exit 3).
    Config(String),
    /// A provider does not answer (exit 4).
    Unreachable(String),
    /// A purge was not confirmed (exit 5).
    NotConfirmed,
}

impl Failure {
    /// An error of `what` (naming the operation, queue and provider).
    pub fn of(what: impl std::fmt::Display, error: MessagingError) -> Self {
        let text = format!("{what}: {error}");
        match error {
            MessagingError::Config(_) => Self::Config(text),
            MessagingError::Connection { .. }
            | MessagingError::CircuitOpen { .. }
            | MessagingError::Tls { .. } => Self::Unreachable(text),
            _ => Self::Failed(text),
        }
    }
}

/// Connects `config`'s backend (migrating when it has `[migration]`).
pub async fn connect(config: &MessagingConfig) -> Result<MessageBackend, Failure> {
    let what = match &config.migration {
        Some(m) => format!("connecting to {} and {}", config.provider, m.to),
        None => format!("connecting to {}", config.provider),
    };
    MessageBackend::connect(config)
        .await
        .map_err(|e| Failure::of(what, e))
}

/// Closes `backend` once a command is done with it, so that what the
/// command settled (peek's releases, the deletes of a move) has reached the
/// server before the process exits (C33). A failed close fails a command
/// that had succeeded.
pub async fn finish(backend: &MessageBackend, outcome: Result<(), Failure>) -> Result<(), Failure> {
    let closed = backend.close().await;
    match (outcome, closed) {
        (Err(failure), _) => Err(failure),
        (Ok(()), Ok(())) => Ok(()),
        (Ok(()), Err(error)) => Err(Failure::of("closing the connection", error)),
    }
}

/// The providers a configuration uses: `provider`, and the migration target.
pub fn providers(config: &MessagingConfig) -> Vec<Provider> {
    let mut providers = vec![config.provider];
    providers.extend(config.migration.as_ref().map(|m| m.to));
    providers
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match args::parse() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("error: {error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = match &args.config {
        Some(path) => MessagingConfig::from_file(path),
        None => MessagingConfig::load(),
    };
    let outcome = match config {
        Ok(config) => run(&config, args.command).await,
        Err(error) => Err(Failure::of("loading the configuration", error)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let (code, text) = match failure {
                Failure::Failed(text) => (1, text),
                Failure::Usage(text) => (2, format!("{text}\n\n{USAGE}")),
                Failure::Config(text) => (3, text),
                Failure::Unreachable(text) => (4, text),
                Failure::NotConfirmed => (5, "not confirmed: nothing was purged".into()),
            };
            eprintln!("error: {text}");
            ExitCode::from(code)
        }
    }
}

async fn run(config: &MessagingConfig, command: Command) -> Result<(), Failure> {
    match command {
        Command::Health => commands::health(config).await,
        Command::Stats { json, queues } => commands::stats(config, queues, json).await,
        Command::Peek { queue, count } => commands::peek(config, &queue, count).await,
        Command::Purge { queue, yes } => commands::purge(config, &queue, yes).await,
        Command::Redrive { queue, limit } => commands::redrive(config, &queue, limit).await,
        Command::Migrate { to, queues } => commands::migrate(config, to, queues).await,
        Command::Config { json } => commands::show_config(config, json),
    }
}
