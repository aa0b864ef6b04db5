//! One function per command.

use std::{io::Write, time::Duration};

use tasker_messaging::{
    move_messages_with_progress, redrive_dead_letters, MessageBackend, MessageRouter,
    MessagingConfig, MessagingService, MigrationConfig, NamespaceQueueRouter, Provider, QueueStats,
    QueuedMessage, RawMessage,
};

use crate::{connect, providers, Failure};

/// `queues`, or the queues of `[queues] namespaces` when none are named.
fn queues_or_namespaces(
    config: &MessagingConfig,
    queues: Vec<String>,
) -> Result<Vec<String>, Failure> {
    if !queues.is_empty() {
        return Ok(queues);
    }
    let router = NamespaceQueueRouter::new(&config.queues.namespace_pattern);
    let queues: Vec<String> = config
        .queues
        .namespaces
        .iter()
        .map(|ns| router.route_to_queue(ns, ""))
        .collect();
    if queues.is_empty() {
        return Err(Failure::Usage(
            "name the queues, or list namespaces in [queues] namespaces".into(),
        ));
    }
    Ok(queues)
}

/// Whether each provider the configuration uses answers.
pub async fn health(config: &MessagingConfig) -> Result<(), Failure> {
    let mut down = Vec::new();
    for provider in providers(config) {
        let answer = match MessageBackend::connect(&config.for_provider(provider)).await {
            Ok(backend) => {
                let answer = backend.health_check().await.map_err(|e| e.to_string());
                if let Err(error) = backend.close().await {
                    eprintln!("warning: closing {provider}: {error}");
                }
                answer
            }
            Err(error) => Err(error.to_string()),
        };
        match answer {
            Ok(true) => println!("{provider:<10} ok"),
            Ok(false) => {
                println!("{provider:<10} NOT ANSWERING");
                down.push(provider.to_string());
            }
            Err(error) => {
                println!("{provider:<10} NOT ANSWERING ({error})");
                down.push(provider.to_string());
            }
        }
    }
    if down.is_empty() {
        Ok(())
    } else {
        Err(Failure::Unreachable(format!(
            "not answering: {}",
            down.join(", ")
        )))
    }
}

/// The effective configuration (file, then environment, validated), as
/// TOML or JSON; passwords in URLs are `***`. Connects to nothing.
pub fn show_config(config: &MessagingConfig, json: bool) -> Result<(), Failure> {
    let text = if json {
        serde_json::to_string_pretty(config).map_err(|e| Failure::Failed(e.to_string()))?
    } else {
        toml::to_string_pretty(config).map_err(|e| Failure::Failed(e.to_string()))?
    };
    println!("{}", text.trim_end());
    Ok(())
}

/// Stats of each queue, as a table or JSON.
pub async fn stats(
    config: &MessagingConfig,
    queues: Vec<String>,
    json: bool,
) -> Result<(), Failure> {
    let queues = queues_or_namespaces(config, queues)?;
    let backend = connect(config).await?;
    let outcome: Result<(), Failure> = async {
        let mut all = Vec::new();
        for queue in &queues {
            let stats = backend
                .get_queue_stats(queue)
                .await
                .map_err(|e| Failure::of(format!("stats of {queue} on {}", describe(config)), e))?;
            all.push(stats);
        }
        if json {
            let text = serde_json::to_string_pretty(&all)
                .map_err(|e| Failure::Failed(format!("writing JSON: {e}")))?;
            println!("{text}");
            return Ok(());
        }
        println!(
            "{:<40} {:<10} {:>8} {:>9} {:>12} {:>7}",
            "queue", "provider", "ready", "in flight", "dead letters", "oldest"
        );
        for stats in &all {
            match &stats.migration {
                None => row(&stats.queue_name, &backend.provider().to_string(), stats),
                Some(sides) => {
                    row(&stats.queue_name, "both", stats);
                    match &sides.source_stats {
                        Some(source) => row("  source", sides.source.tag(), source),
                        None => println!("{:<40} {:<10} (no such queue)", "  source", sides.source),
                    }
                    row("  target", sides.target.tag(), &sides.target_stats);
                }
            }
        }
        Ok(())
    }
    .await;
    crate::finish(&backend, outcome).await
}

fn row(name: &str, provider: &str, s: &QueueStats) {
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let age = s
        .oldest_message_age_seconds
        .map_or_else(|| "-".to_owned(), |a| format!("{a}s"));
    println!(
        "{name:<40} {provider:<10} {:>8} {:>9} {:>12} {age:>7}",
        s.message_count,
        opt(s.in_flight_count),
        opt(s.dead_letter_count),
    );
}

fn describe(config: &MessagingConfig) -> String {
    match &config.migration {
        Some(m) => format!("{} -> {}", config.provider, m.to),
        None => config.provider.to_string(),
    }
}

/// Shows ready messages by leasing them for a second and releasing them.
pub async fn peek(config: &MessagingConfig, queue: &str, count: usize) -> Result<(), Failure> {
    if count == 0 {
        return Err(Failure::Usage("-n must be at least 1".into()));
    }
    let backend = connect(config).await?;
    let outcome: Result<(), Failure> = async {
        eprintln!(
            "peek: receives up to {count} ready messages of {queue} with a 1 s lease and releases \
         them at once (visibility 0). Each one's receive_count goes up by one, as for any \
         receive: a message peeked at max_receive_count ({}) moves to the dead-letter queue at \
         its next receive. Leased messages are not shown.",
            config.queues.max_receive_count
        );
        let got: Vec<QueuedMessage<RawMessage>> = backend
            .receive_messages(queue, count, Duration::from_secs(1))
            .await
            .map_err(|e| Failure::of(format!("peek {queue} on {}", describe(config)), e))?;
        for message in &got {
            let m = &message.metadata;
            println!(
                "id {}  receive_count {}  enqueued {}\n  {}",
                m.message_id,
                m.receive_count,
                m.enqueued_at.to_rfc3339(),
                message.message.json()
            );
            if !m.headers.is_empty() {
                // JSON, so that any value prints unambiguously.
                let headers = serde_json::to_string(&m.headers).unwrap_or_default();
                println!("  headers {headers}");
            }
            if let Err(error) = backend
                .change_message_visibility(queue, message.receipt(), Duration::ZERO)
                .await
            {
                eprintln!(
                    "warning: could not release {}: {error} (it returns when its 1 s lease ends)",
                    m.message_id
                );
            }
        }
        eprintln!("peek: {} message(s) shown and released", got.len());
        Ok(())
    }
    .await;
    crate::finish(&backend, outcome).await
}

/// Removes the ready messages of `queue`, after a confirmation.
pub async fn purge(config: &MessagingConfig, queue: &str, yes: bool) -> Result<(), Failure> {
    let backend = connect(config).await?;
    let outcome: Result<(), Failure> = async {
        if !yes {
            let ready = backend
                .get_queue_stats(queue)
                .await
                .map_err(|e| Failure::of(format!("stats of {queue} on {}", describe(config)), e))?
                .message_count;
            eprint!(
                "purge {ready} ready message(s) of {queue} on {}? Leased ones stay. [y/N] ",
                describe(config)
            );
            let _ = std::io::stderr().flush();
            let mut answer = String::new();
            let confirmed = std::io::stdin().read_line(&mut answer).is_ok()
                && matches!(answer.trim(), "y" | "Y" | "yes");
            if !confirmed {
                return Err(Failure::NotConfirmed);
            }
        }
        let purged = backend
            .purge_queue(queue)
            .await
            .map_err(|e| Failure::of(format!("purge {queue} on {}", describe(config)), e))?;
        println!("purged {purged} ready message(s) from {queue}");
        Ok(())
    }
    .await;
    crate::finish(&backend, outcome).await
}

/// Moves dead letters of `queue` back into it.
pub async fn redrive(config: &MessagingConfig, queue: &str, limit: usize) -> Result<(), Failure> {
    let backend = connect(config).await?;
    let outcome: Result<(), Failure> = async {
    let dlq = format!("{queue}{}", config.queues.dead_letter_queue_suffix);
    match redrive_dead_letters(&backend, queue, limit).await {
        Ok(report) => {
            println!(
                "moved {} message(s) from {dlq} back to {queue} ({} possibly duplicated)",
                report.sent(),
                report.duplicated
            );
            if report.refused > 0 {
                println!(
                    "{} message(s) refused by {queue} (too large or not acceptable there) stay in {dlq}",
                    report.refused
                );
            }
            Ok(())
        }
        Err(error) => Err(Failure::of(
            format!(
                "redrive {dlq} -> {queue} on {} after {} moved",
                describe(config),
                error.done.sent()
            ),
            error.error,
        )),
    }
    }
    .await;
    crate::finish(&backend, outcome).await
}

/// Moves every ready message of the queues (and their dead-letter queues)
/// from `provider` to `to`, with a progress line and a summary.
pub async fn migrate(
    config: &MessagingConfig,
    to: Provider,
    queues: Vec<String>,
) -> Result<(), Failure> {
    // The same rules as a [migration] section: two server providers, both configured.
    let mut check = config.for_provider(config.provider);
    check.migration = Some(MigrationConfig::new(to));
    check.validate().map_err(|e| Failure::of("--to", e))?;
    let queues = queues_or_namespaces(config, queues)?;
    let from = config.provider;
    let source = connect(&config.for_provider(from)).await?;
    let target = connect(&config.for_provider(to)).await?;
    let outcome: Result<(), Failure> = async {
        let suffix = &config.queues.dead_letter_queue_suffix;
        let mut summary = Vec::new();
        for queue in &queues {
            target
                .create_queue(queue)
                .await
                .map_err(|e| Failure::of(format!("create {queue} on {to}"), e))?;
            for name in [queue.clone(), format!("{queue}{suffix}")] {
                let progress = |done: &tasker_messaging::MoveReport| {
                    eprint!("\rmigrate {name}: {} moved", done.sent());
                    let _ = std::io::stderr().flush();
                };
                let report = move_messages_with_progress(
                    &source,
                    &name,
                    &target,
                    &name,
                    usize::MAX,
                    progress,
                )
                .await
                .map_err(|e| {
                    eprintln!();
                    Failure::of(
                        format!(
                            "migrate {name} from {from} to {to} after {} moved",
                            e.done.sent()
                        ),
                        e.error,
                    )
                })?;
                eprintln!("\rmigrate {name}: {} moved", report.sent());
                let left = source
                    .get_queue_stats(&name)
                    .await
                    .map_err(|e| Failure::of(format!("stats of {name} on {from}"), e))?;
                summary.push((name, report, left));
            }
        }
        println!(
            "{:<40} {:>8} {:>10} {:>14} {:>15} {:>15}",
            "queue", "moved", "duplicated", "left (ready)", "left (leased)", "left (delayed)"
        );
        let (mut moved, mut leased, mut delayed_unknown) = (0, 0, false);
        let mut delayed = 0;
        for (name, report, left) in &summary {
            let known = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
            println!(
                "{name:<40} {:>8} {:>10} {:>14} {:>15} {:>15}",
                report.sent(),
                report.duplicated,
                left.message_count,
                known(left.in_flight_count),
                known(left.delayed_count),
            );
            moved += report.sent();
            leased += left.in_flight_count.unwrap_or(0) + left.message_count;
            delayed += left.delayed_count.unwrap_or(0);
            delayed_unknown |= left.delayed_count.is_none();
        }
        println!("migrated {moved} message(s) from {from} to {to}");
        if leased > 0 {
            println!(
                "{leased} message(s) still on {from} (leased by workers, or sent meanwhile): \
             run migrate again once their workers are done or their leases ended"
            );
        }
        // A delayed message is receivable, and so movable, only once due.
        if delayed > 0 {
            println!(
                "{delayed} delayed message(s) still on {from}: they become movable when due; \
             run migrate again after the longest delay before retiring {from}"
            );
        } else if delayed_unknown {
            println!(
                "{from} cannot count delayed messages: any sent with a delay reach its queues \
             when due; run migrate again after the longest delay before retiring {from}"
            );
        }
        Ok(())
    }
    .await;
    let outcome = crate::finish(&source, outcome).await;
    crate::finish(&target, outcome).await
}
