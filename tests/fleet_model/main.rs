//! A randomized fleet check, run on every provider (migrating variants
//! included), in the spirit of Jepsen's checkers and stateful property tests.
//!
//! Three independently connected processes (for in-memory, clones), two
//! workers each, make random calls on two queues for a few seconds: sends,
//! batches, receives, waiting receives, deletes, batch deletes, extensions,
//! releases, and on the second queue purges and a delete + re-create. A
//! quarter of the calls are dropped mid-flight (a `timeout` of 0-3 ms, or
//! after 0-3 wake-ups), and a quarter of the receipts are used through
//! another process than their holder's. PGMQ runs on a pool of 2, leases
//! last 1 s, so leases run out during a run. After the run every lease ends,
//! a fresh backend drains both queues, and [`checker::check`] reads the
//! whole history against a model: no `Ok` send lost, no leased message
//! vanished, no `Ok` delete undone, no message deleted twice, no receipt
//! settling a lease it does not name (another queue, a deleted queue, a
//! deleted message, a newer lease), no live lease refused to its holder,
//! `receive_count` growing with every hand-out, and never two live leases
//! on one message. Dropped calls count as "maybe happened" whichever way
//! excuses what was seen, so they never raise an alarm.
//!
//! The run is seeded: each worker draws its calls from its own generator.
//! Timing still varies from run to run, so a seed replays the same mix of
//! calls, not the same interleaving.
//!
//! - `cargo test --test fleet_model`: 3 s per provider, a fresh seed each
//!   time, printed with every failure.
//! - `TASKER_FLEET_SEED=<n>` replays a seed; `TASKER_FLEET_SECS=120` runs
//!   longer; `TASKER_FLEET_OFF=cancel,cross,recreate,purge` turns off any of
//!   those sources of disorder (to narrow down a finding). For example:
//!   `TASKER_FLEET_SECS=120 cargo test --test fleet_model -- --nocapture pgmq::`.
//!
//! Where a process talks to RabbitMQ, the random run deletes and re-creates
//! no queue unless `TASKER_FLEET_RABBITMQ_RECREATE=1`: RabbitMQ 3.10 closes
//! the whole connection of a publish or a `basic.get` that meets a queue
//! being deleted (`541 INTERNAL_ERROR`, `noproc`), so that process's leases
//! on every other queue end at once and their messages are handed out again
//! while their holders still work on them (CONTRACT.md, C12's RabbitMQ
//! exception). The summary line says when this applies.
//!
//! The `regressions` module keeps the cases this check found, shrunk by
//! hand to small deterministic tests.

#[path = "../common/mod.rs"]
mod common;

mod checker;
mod driver;
mod history;
mod regressions;

use std::{collections::BTreeMap, time::Duration};

use tasker_messaging::{MessageBackend, MessagingConfig, MigrationConfig, Provider};

/// The suites' configuration, with a PGMQ pool of 2 (cancelled calls then
/// often hit a connection another caller uses next) and no dead-lettering
/// within a run.
pub fn fleet_config(provider: Provider) -> MessagingConfig {
    let mut config = common::config(provider);
    config.queues.max_receive_count = 100_000;
    if let Some(pgmq) = config.pgmq.as_mut() {
        pgmq.pool_size = 2;
    }
    config
}

/// How to connect one process of the fleet.
#[derive(Clone, Copy)]
pub enum Variant {
    Plain(Provider),
    Migrating(Provider, Provider),
}

impl Variant {
    /// Whether its processes talk to RabbitMQ (see the module documentation).
    pub fn uses_rabbitmq(self) -> bool {
        matches!(
            self,
            Self::Plain(Provider::RabbitMq)
                | Self::Migrating(_, Provider::RabbitMq)
                | Self::Migrating(Provider::RabbitMq, _)
        )
    }

    pub async fn connect(self) -> MessageBackend {
        match self {
            Self::Plain(provider) => common::connect(fleet_config(provider), provider).await,
            Self::Migrating(from, to) => {
                let mut config = fleet_config(from);
                config.migration = Some(MigrationConfig::new(to));
                common::connect(config, to).await
            }
        }
    }

    /// `n` processes on the same queues: separate connections, or clones of
    /// one in-memory backend.
    pub async fn processes(self, n: usize) -> Vec<MessageBackend> {
        let first = self.connect().await;
        let mut all = vec![first.clone()];
        for _ in 1..n {
            all.push(match self {
                Self::Plain(Provider::InMemory) => first.clone(),
                _ => self.connect().await,
            });
        }
        all
    }
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    let text = std::env::var(name).ok()?;
    Some(
        text.parse()
            .unwrap_or_else(|_| panic!("{name}={text} does not parse")),
    )
}

/// The plan the environment asks for, on `variant`.
fn plan(variant: Variant) -> driver::Plan {
    let seed = env("TASKER_FLEET_SEED").unwrap_or_else(rand::random::<u64>);
    let secs: f64 = env("TASKER_FLEET_SECS").unwrap_or(3.0);
    let off: String = env("TASKER_FLEET_OFF").unwrap_or_default();
    let off: Vec<&str> = off.split(',').map(str::trim).collect();
    for word in &off {
        assert!(
            ["", "cancel", "cross", "recreate", "purge"].contains(word),
            "TASKER_FLEET_OFF: unknown {word}"
        );
    }
    driver::Plan {
        seed,
        run_for: Duration::from_secs_f64(secs),
        workers_per_process: 2,
        cancel_rate: if off.contains(&"cancel") { 0.0 } else { 0.25 },
        cross_receipts: !off.contains(&"cross"),
        recreate: !off.contains(&"recreate")
            && (!variant.uses_rabbitmq() || env::<u8>("TASKER_FLEET_RABBITMQ_RECREATE") == Some(1)),
        purge: !off.contains(&"purge"),
    }
}

/// Runs the fleet on `variant` as the environment says, and fails with the
/// seed and the violations.
pub async fn fleet_keeps_the_contract(name: &str, variant: Variant) {
    run_and_check(name, variant, plan(variant)).await;
}

/// Runs `plan` on `variant` and fails with the seed and the violations.
pub async fn run_and_check(name: &str, variant: Variant, plan: driver::Plan) {
    let processes = variant.processes(3).await;
    let drain = match variant {
        Variant::Plain(Provider::InMemory) => processes[0].clone(),
        _ => variant.connect().await,
    };
    let started = std::time::Instant::now();
    let run = driver::run(processes, drain, plan.clone()).await;
    let violations = checker::check(&run.history);
    let mut rules: BTreeMap<&str, usize> = BTreeMap::new();
    for v in &violations {
        *rules.entry(v.rule).or_default() += 1;
    }
    let summary = format!(
        "fleet model on {name}: seed {} ({:?}), {:.1} s run, {} calls ({} dropped), {} deliveries, {} violations {rules:?}",
        plan.seed,
        plan,
        started.elapsed().as_secs_f64(),
        run.calls,
        run.cancelled,
        run.history.deliveries.len(),
        violations.len(),
    );
    println!("{summary}");
    if violations.is_empty() {
        return;
    }
    let mut text = format!(
        "{summary}\nfirst seen {:.3} s into the run; replay with TASKER_FLEET_SEED={}\n",
        violations[0].at.as_secs_f64(),
        plan.seed
    );
    let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
    for v in &violations {
        let n = shown.entry(v.rule).or_default();
        *n += 1;
        if *n <= 2 {
            text.push_str(&format!(
                "- {} (at {:.3} s): {}\n",
                v.rule,
                v.at.as_secs_f64(),
                v.detail
            ));
        }
    }
    panic!("{text}");
}

macro_rules! fleet_model {
    ($($name:ident => $variant:expr;)+) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use tasker_messaging::Provider::{InMemory, Pgmq, RabbitMq};
                #[allow(unused_imports)]
                use crate::Variant::{Migrating, Plain};

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn random_fleet_keeps_the_contract() {
                    crate::fleet_keeps_the_contract(stringify!($name), $variant).await;
                }

                fleet_model!(@regressions $variant;
                    a_receipt_through_another_process_settles_only_its_own_lease,
                    a_receipt_from_a_deleted_queue_settles_nothing,
                    dropped_calls_on_a_small_pool_lose_nothing,
                    a_queue_recreated_under_use_spares_other_leases,
                );
            }
        )+
    };
    (@regressions $variant:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                crate::regressions::$case($variant).await;
            }
        )+
    };
}

fleet_model! {
    pgmq => Plain(Pgmq);
    rabbitmq => Plain(RabbitMq);
    in_memory => Plain(InMemory);
    pgmq_to_rabbitmq => Migrating(Pgmq, RabbitMq);
    rabbitmq_to_pgmq => Migrating(RabbitMq, Pgmq);
}
