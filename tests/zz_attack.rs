mod common;
use std::{collections::HashMap, process::Command, sync::{Arc, Mutex}, time::{Duration, Instant}};
use tasker_messaging::{MessageBackend, MessagingService, Provider, SendOptions, SimpleStepMessage};
use uuid::Uuid;

fn qname(p: &str) -> String { format!("{p}_{}", &Uuid::new_v4().simple().to_string()[..8]) }
fn lq(q: &str) -> String {
    let o = Command::new("rabbitmqctl").args(["-q","list_queues","name","messages_ready","messages_unacknowledged","consumers"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.starts_with(q)).collect::<Vec<_>>().join("\n")
}
fn conns() -> usize {
    let o = Command::new("rabbitmqctl").args(["-q","list_connections","name"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).lines().filter(|l| !l.trim().is_empty() && !l.starts_with("name")).count()
}
async fn with_prefetch(n: u16) -> MessageBackend {
    let mut c = common::config(Provider::RabbitMq);
    c.rabbitmq.as_mut().unwrap().prefetch_count = n;
    common::connect(c, Provider::RabbitMq).await
}

async fn drain_workers(b: &MessageBackend, q: &str, n: usize, workers: usize, max: usize, deadline: Duration, drop_ms: Option<u64>) -> HashMap<String, Vec<u32>> {
    let seen: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let start = Instant::now();
    let mut js = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (b, q, seen) = (b.clone(), q.to_string(), seen.clone());
        js.spawn(async move {
            let mut i = 0u64;
            while seen.lock().unwrap().len() < n && start.elapsed() < deadline {
                i += 1;
                let fut = b.receive_messages_wait::<SimpleStepMessage>(&q, max, Duration::from_secs(5), Duration::from_millis(200));
                let got = match drop_ms {
                    Some(ms) => match tokio::time::timeout(Duration::from_micros((i * 7919 + w as u64 * 131) % (ms * 1000) + 1), fut).await { Ok(r) => r, Err(_) => continue },
                    None => fut.await,
                };
                let got = match got { Ok(g) => g, Err(e) => { eprintln!("recv err {e}"); tokio::time::sleep(Duration::from_millis(20)).await; continue } };
                for m in got {
                    seen.lock().unwrap().entry(m.metadata.message_id.as_str().to_string()).or_default().push(m.metadata.receive_count);
                    if let Err(e) = b.delete_message(&q, m.receipt()).await { eprintln!("delete err {e}"); }
                }
            }
        });
    }
    while js.join_next().await.is_some() {}
    let s = seen.lock().unwrap().clone();
    s
}

fn summary(tag: &str, n: usize, s: &HashMap<String, Vec<u32>>, t: Duration) {
    let dups = s.values().filter(|v| v.len() > 1).count();
    let counted = s.values().filter(|v| v[0] > 1).count();
    eprintln!("[{tag}] sent {n} distinct {} dups {dups} first-receive_count>1 {counted} in {:?}", s.len(), t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_race_prefetch1() {
    for round in 0..3 {
        let b = with_prefetch(1).await;
        let q = qname("atk_rep");
        b.create_queue(&q).await.unwrap();
        let n = 300;
        let msgs: Vec<_> = (0..n).map(|_| SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4())).collect();
        for c in msgs.chunks(50) { b.send_batch(&q, c).await.unwrap(); }
        let t = Instant::now();
        let s = drain_workers(&b, &q, n, 4, 1, Duration::from_secs(20), None).await;
        summary(&format!("replace r{round}"), n, &s, t.elapsed());
        eprintln!("  queue: {}", lq(&q));
        b.delete_queue(&q).await.ok();
        b.close().await.ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_dropped_futures() {
    let b = common::backend(Provider::RabbitMq).await;
    let q = qname("atk_drop");
    b.create_queue(&q).await.unwrap();
    let n = 400;
    let (b2, q2) = (b.clone(), q.clone());
    let prod = tokio::spawn(async move {
        for _ in 0..n { b2.send_message(&q2, &SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4())).await.unwrap(); tokio::time::sleep(Duration::from_millis(2)).await; }
    });
    let t = Instant::now();
    let s = drain_workers(&b, &q, n, 6, 5, Duration::from_secs(25), Some(3)).await;
    prod.await.unwrap();
    summary("dropped", n, &s, t.elapsed());
    eprintln!("  queue after: {}", lq(&q));
    // Anything left: drain with plain receives
    tokio::time::sleep(Duration::from_secs(6)).await;
    let rest = b.receive_messages::<SimpleStepMessage>(&q, 100, Duration::from_secs(5)).await.unwrap();
    eprintln!("  left after 6s: {} ; queue {}", rest.len(), lq(&q));
    b.delete_queue(&q).await.ok();
    b.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_give_back_preserves() {
    let b = common::backend(Provider::RabbitMq).await;
    let q = qname("atk_gb");
    b.create_queue(&q).await.unwrap();
    let (b2, q2) = (b.clone(), q.clone());
    let waiter = tokio::spawn(async move { b2.receive_messages_wait::<SimpleStepMessage>(&q2, 10, Duration::from_secs(30), Duration::from_secs(5)).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.send_message(&q, &SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4())).await.unwrap();
    let first = waiter.await.unwrap();
    eprintln!("first got {}", first.len());
    let mut sent = HashMap::new();
    for i in 0..9 {
        let opts = SendOptions::new().header("traceparent", format!("00-{:032x}-{:016x}-01", i, i)).header("user-h", "v");
        let id = b.send_message_with(&q, &SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4()), &opts).await.unwrap();
        sent.insert(id.as_str().to_string(), i);
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    eprintln!("  queue during hold: {}", lq(&q));
    tokio::time::sleep(Duration::from_millis(400)).await;
    eprintln!("  queue after: {}", lq(&q));
    let got = b.receive_messages::<SimpleStepMessage>(&q, 20, Duration::from_secs(30)).await.unwrap();
    for m in &got {
        eprintln!("  id {} known {} rc {} enq {} headers {:?}", m.metadata.message_id.as_str(), sent.contains_key(m.metadata.message_id.as_str()), m.metadata.receive_count, m.metadata.enqueued_at, m.headers());
    }
    b.delete_queue(&q).await.ok();
    b.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_drop_backend_without_close() {
    let before = conns();
    {
        let b = common::backend(Provider::RabbitMq).await;
        let q = qname("atk_dropb");
        b.create_queue(&q).await.unwrap();
        let r = b.receive_messages_wait::<SimpleStepMessage>(&q, 5, Duration::from_secs(30), Duration::from_millis(50)).await.unwrap();
        assert!(r.is_empty());
        // keep a waiter in flight
        let (b2, q2) = (b.clone(), q.clone());
        let h = tokio::spawn(async move { let _ = b2.receive_messages_wait::<SimpleStepMessage>(&q2, 5, Duration::from_secs(30), Duration::from_secs(1)).await; });
        tokio::time::sleep(Duration::from_millis(50)).await;
        eprintln!("conns during {}", conns());
        h.abort();
        let _ = h.await;
        b.delete_queue(&q).await.ok();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!("conns before {before} after drop {}", conns());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_close_while_holding() {
    let b = common::backend(Provider::RabbitMq).await;
    let other = common::backend(Provider::RabbitMq).await;
    let q = qname("atk_close");
    b.create_queue(&q).await.unwrap();
    let (b2, q2) = (b.clone(), q.clone());
    let waiter = tokio::spawn(async move { b2.receive_messages_wait::<SimpleStepMessage>(&q2, 10, Duration::from_secs(30), Duration::from_secs(5)).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    other.send_message(&q, &SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4())).await.unwrap();
    let first = waiter.await.unwrap();
    b.delete_message(&q, first[0].receipt()).await.unwrap();
    let msgs: Vec<_> = (0..9).map(|_| SimpleStepMessage::new(Uuid::new_v4(), Uuid::new_v4())).collect();
    other.send_batch(&q, &msgs).await.unwrap();
    tokio::time::sleep(Duration::from_millis(15)).await;
    eprintln!("  queue during hold: {}", lq(&q));
    b.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    eprintln!("  queue after close: {}", lq(&q));
    let got = other.receive_messages::<SimpleStepMessage>(&q, 20, Duration::from_secs(30)).await.unwrap();
    eprintln!("  got {} counts {:?}", got.len(), got.iter().map(|m| m.metadata.receive_count).collect::<Vec<_>>());
    other.delete_queue(&q).await.ok();
    other.close().await.ok();
}
