//! The command line, parsed with lexopt.

use std::path::PathBuf;

use tasker_messaging::Provider;

pub const USAGE: &str = "\
usage: tasker-messaging [--config FILE] COMMAND

commands:
  health                          whether each configured provider answers
  stats [--json] [QUEUE...]       ready, leased and dead-lettered counts
  peek QUEUE [-n N]               show up to N (10) ready messages without consuming them
  purge QUEUE [--yes]             remove the ready messages (asks first unless --yes)
  dlq redrive QUEUE [-n N]        move up to N (all) dead letters back into QUEUE
  migrate --to PROVIDER [--queues Q,...]
                                  move what is queued in `provider` to PROVIDER
  config [--json]                 print the effective configuration (TOML, or
                                  JSON), passwords shown as ***

Queues default to those of [queues] namespaces. Configuration as for the
library: --config FILE, else TASKER_MESSAGING_CONFIG or config/messaging.toml,
then TASKER_MESSAGING_* variables.

exit codes: 0 done, 1 an operation failed, 2 usage, 3 configuration,
            4 a provider does not answer, 5 purge not confirmed";

/// What to do.
pub enum Command {
    Health,
    Stats { json: bool, queues: Vec<String> },
    Peek { queue: String, count: usize },
    Purge { queue: String, yes: bool },
    Redrive { queue: String, limit: usize },
    Migrate { to: Provider, queues: Vec<String> },
    Config { json: bool },
}

pub struct Args {
    pub config: Option<PathBuf>,
    pub command: Command,
}

pub fn parse() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;

    let mut parser = lexopt::Parser::from_env();
    let mut config = None;
    let mut words: Vec<String> = Vec::new();
    let (mut json, mut yes, mut count, mut to, mut queues) = (false, false, None, None, Vec::new());
    while let Some(arg) = parser.next()? {
        match arg {
            Long("config") => config = Some(parser.value()?.into()),
            Long("json") => json = true,
            Long("yes") | Short('y') => yes = true,
            Short('n') => count = Some(parser.value()?.parse::<usize>()?),
            Long("to") => to = Some(provider(&parser.value()?.string()?)?),
            Long("queues") => queues.extend(
                parser
                    .value()?
                    .string()?
                    .split(',')
                    .filter(|q| !q.is_empty())
                    .map(str::to_owned),
            ),
            Short('h') | Long("help") => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            Value(word) => words.push(word.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    let mut words = words.into_iter();
    let one_queue = |words: &mut std::vec::IntoIter<String>, command: &str| {
        let queue = words
            .next()
            .ok_or_else(|| lexopt::Error::from(format!("{command} needs a QUEUE")))?;
        match words.next() {
            Some(extra) => Err(lexopt::Error::from(format!(
                "unexpected argument {extra:?}"
            ))),
            None => Ok(queue),
        }
    };
    let command = match words.next().as_deref() {
        Some("health") => Command::Health,
        Some("stats") => Command::Stats {
            json,
            queues: words.by_ref().collect(),
        },
        Some("peek") => Command::Peek {
            queue: one_queue(&mut words, "peek")?,
            count: count.unwrap_or(10),
        },
        Some("purge") => Command::Purge {
            queue: one_queue(&mut words, "purge")?,
            yes,
        },
        Some("dlq") => match words.next().as_deref() {
            Some("redrive") => Command::Redrive {
                queue: one_queue(&mut words, "dlq redrive")?,
                limit: count.unwrap_or(usize::MAX),
            },
            _ => return Err("the dlq command is `dlq redrive QUEUE`".into()),
        },
        Some("migrate") => Command::Migrate {
            to: to.ok_or("migrate needs --to PROVIDER")?,
            queues,
        },
        Some("config") => Command::Config { json },
        Some(other) => return Err(format!("unknown command {other:?}").into()),
        None => return Err("no command given".into()),
    };
    if let Some(extra) = words.next() {
        return Err(format!("unexpected argument {extra:?}").into());
    }
    Ok(Args { config, command })
}

fn provider(name: &str) -> Result<Provider, lexopt::Error> {
    match name {
        "pgmq" => Ok(Provider::Pgmq),
        "rabbitmq" => Ok(Provider::RabbitMq),
        "in_memory" => Ok(Provider::InMemory),
        other => Err(format!("unknown provider {other:?} (pgmq, rabbitmq or in_memory)").into()),
    }
}
