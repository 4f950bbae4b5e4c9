//! What each queue costs the broker, to decide how many queues per app the
//! worker may declare: for quorum queues (single active consumer, as the
//! jobs queue), classic durable queues and bare fanout exchanges, N of each
//! declared over one connection (at most 16 in flight), one consumer
//! registered on each queue, then all deleted; the time of each step and
//! the broker's memory (`erlang:memory(total)`), Erlang processes and file
//! handles (`file_handle_cache`'s count) added per item, read with
//! `rabbitmqctl eval` before and ~3 s after. Everything is on a private
//! RabbitMQ node this bench starts (as the cluster tests do) with the hard
//! open-files limit, and stops at the end, on an error or a Ctrl-C too: 500
//! quorum queues hold more file handles than a node under a login's limit of
//! 1,024 has, and past that a node stops answering handshakes (README,
//! "Sizing the broker"), so the shared node on 5672 is never used.
//!
//! Run with `cargo bench --bench queue_cost` (as root, with
//! `rabbitmq-server`). Prints a Markdown table;
//! `QUEUE_COST_COUNTS=100,500,1000` changes the counts (at most 1,000 each).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, Consumer, ExchangeKind};
use testkit::Cluster;

/// Declares, consumes and deletes in flight at once (one channel each).
const IN_FLIGHT: usize = 16;
/// The most items of one kind, not to wedge a shared broker.
const MAX_COUNT: usize = 1000;
/// From the last consumer to the second reading.
const SETTLE_BEFORE_READING: Duration = Duration::from_secs(3);
/// The longest wait, after deleting, for memory and processes to come back.
const SETTLE_AFTER_DELETE: Duration = Duration::from_secs(30);

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Quorum,
    Classic,
    Exchange,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Quorum => "quorum queue (SAC)",
            Kind::Classic => "classic queue",
            Kind::Exchange => "fanout exchange",
        }
    }

    fn is_queue(self) -> bool {
        self != Kind::Exchange
    }
}

/// The private node, from its start to the end of `main`.
static NODE: Mutex<Option<Cluster>> = Mutex::new(None);

/// `rabbitmqctl ARGS` on the private node.
async fn ctl(args: &[&str]) -> Result<String, Error> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        let node = NODE.lock().unwrap();
        let node = node.as_ref().expect("the node is started");
        node.ctl(0, &args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await?;
    if !output.status.success() {
        return Err(format!(
            "rabbitmqctl: {}{}",
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// An Erlang expression evaluated on the node, as an integer.
async fn eval_int(expression: &str) -> Result<i64, Error> {
    let out = ctl(&["eval", expression]).await?;
    out.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| format!("rabbitmqctl eval {expression}: not a number: {out}").into())
}

/// The node's memory (bytes), Erlang processes and file handles in use.
async fn reading() -> Result<(i64, i64, i64), Error> {
    Ok((
        eval_int("erlang:memory(total).").await?,
        eval_int("erlang:system_info(process_count).").await?,
        eval_int("element(2, hd(file_handle_cache:info([total_used]))).").await?,
    ))
}

fn counts() -> Vec<usize> {
    let Ok(text) = std::env::var("QUEUE_COST_COUNTS") else {
        return vec![100, 500];
    };
    text.split(',')
        .filter_map(|n| n.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .map(|n| {
            if n > MAX_COUNT {
                eprintln!("QUEUE_COST_COUNTS: {n} lowered to {MAX_COUNT}");
            }
            n.min(MAX_COUNT)
        })
        .collect()
}

/// Runs `step(channel, i)` for every `i` below `n`, each of `channels`
/// taking every `channels.len()`-th item in turn.
async fn striped<T, F, Fut>(channels: &[Channel], n: usize, step: F) -> Result<Vec<T>, Error>
where
    F: Fn(Channel, usize) -> Fut + Copy,
    Fut: std::future::Future<Output = Result<T, lapin::Error>>,
{
    let stripes = channels.iter().enumerate().map(|(w, channel)| async move {
        let mut out = Vec::new();
        for i in (w..n).step_by(channels.len()) {
            out.push(step(channel.clone(), i).await?);
        }
        Ok::<_, lapin::Error>(out)
    });
    Ok(try_join_all(stripes).await?.into_iter().flatten().collect())
}

fn name(kind: Kind, i: usize) -> String {
    match kind {
        Kind::Quorum => format!("qq.{i:04}"),
        Kind::Classic => format!("cq.{i:04}"),
        Kind::Exchange => format!("fx.{i:04}"),
    }
}

struct Row {
    kind: Kind,
    n: usize,
    declare_s: f64,
    consume_s: Option<f64>,
    delete_s: f64,
    memory_kib: f64,
    processes: f64,
    handles: f64,
}

/// Waits until the node is back near `before` (processes) and its memory
/// stops falling, or [`SETTLE_AFTER_DELETE`]; the seconds it took and the
/// last reading.
async fn settle(before: (i64, i64, i64)) -> Result<(f64, (i64, i64, i64)), Error> {
    let started = Instant::now();
    let mut last = reading().await?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = reading().await?;
        let steady = (now.0 - last.0).abs() < 1 << 20;
        last = now;
        if (now.1 <= before.1 + 10 && steady) || started.elapsed() >= SETTLE_AFTER_DELETE {
            return Ok((started.elapsed().as_secs_f64(), now));
        }
    }
}

async fn measure(connection: &Connection, kind: Kind, n: usize) -> Result<Row, Error> {
    let mut channels = Vec::new();
    for _ in 0..IN_FLIGHT.min(n) {
        channels.push(connection.create_channel().await?);
    }
    let before = reading().await?;

    let started = Instant::now();
    striped(&channels, n, |channel, i| async move {
        let name = name(kind, i);
        match kind {
            Kind::Quorum | Kind::Classic => {
                let mut arguments = FieldTable::default();
                if kind == Kind::Quorum {
                    arguments.insert(
                        "x-queue-type".into(),
                        AMQPValue::LongString("quorum".into()),
                    );
                    arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
                }
                let options = QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                };
                channel
                    .queue_declare(name.as_str().into(), options, arguments)
                    .await
                    .map(|_| ())
            }
            Kind::Exchange => {
                let options = ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                };
                channel
                    .exchange_declare(
                        name.as_str().into(),
                        ExchangeKind::Fanout,
                        options,
                        FieldTable::default(),
                    )
                    .await
            }
        }
    })
    .await?;
    let declare_s = started.elapsed().as_secs_f64();

    let mut consumers: Vec<Consumer> = Vec::new();
    let consume_s = if kind.is_queue() {
        let started = Instant::now();
        consumers = striped(&channels, n, |channel, i| async move {
            channel
                .basic_consume(
                    name(kind, i).as_str().into(),
                    format!("queue-cost-{i}").as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
        })
        .await?;
        Some(started.elapsed().as_secs_f64())
    } else {
        None
    };

    tokio::time::sleep(SETTLE_BEFORE_READING).await;
    let after = reading().await?;

    let started = Instant::now();
    striped(&channels, n, |channel, i| async move {
        let name = name(kind, i);
        if kind.is_queue() {
            channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await
                .map(|_| ())
        } else {
            channel
                .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                .await
        }
    })
    .await?;
    let delete_s = started.elapsed().as_secs_f64();
    drop(consumers);
    for channel in &channels {
        let _ = channel.close(200, "queue cost measured".into()).await;
    }
    let (settle_s, settled) = settle(before).await?;
    eprintln!(
        "{} x{n}: before {:.1} MiB / {} processes, with them {:.1} MiB / {}, \
         {settle_s:.0} s after deleting {:.1} MiB / {}",
        kind.label(),
        before.0 as f64 / 1048576.0,
        before.1,
        after.0 as f64 / 1048576.0,
        after.1,
        settled.0 as f64 / 1048576.0,
        settled.1,
    );

    Ok(Row {
        kind,
        n,
        declare_s,
        consume_s,
        delete_s,
        memory_kib: (after.0 - before.0) as f64 / 1024.0 / n as f64,
        processes: (after.1 - before.1) as f64 / n as f64,
        handles: (after.2 - before.2) as f64 / n as f64,
    })
}

async fn run(url: &str, rows: &mut Vec<Row>) -> Result<(), Error> {
    let connection =
        broadcast_worker::broker::connect(url, "broadcast-worker queue_cost bench").await?;
    for kind in [Kind::Quorum, Kind::Classic, Kind::Exchange] {
        for n in counts() {
            let row = measure(&connection, kind, n).await?;
            eprintln!(
                "{} x{n}: declared in {:.2} s, deleted in {:.2} s",
                kind.label(),
                row.declare_s,
                row.delete_s
            );
            rows.push(row);
        }
    }
    let _ = connection.close(200, "queue cost measured".into()).await;
    Ok(())
}

fn table(rows: &[Row]) -> String {
    let mut table = String::from(
        "| kind | N | declare s | consume s | delete s | memory per item (KiB) | processes per item | file handles per item |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let consume = r.consume_s.map_or("-".into(), |s| format!("{s:.2}"));
        table.push_str(&format!(
            "| {} | {} | {:.2} | {consume} | {:.2} | {:.1} | {:.2} | {:.2} |\n",
            r.kind.label(),
            r.n,
            r.declare_s,
            r.delete_s,
            r.memory_kib,
            r.processes,
            r.handles
        ));
    }
    table
}

#[tokio::main]
async fn main() {
    eprintln!("starting a private RabbitMQ node");
    let node = tokio::task::spawn_blocking(|| Cluster::start(1))
        .await
        .unwrap();
    let url = node.url(0);
    *NODE.lock().unwrap() = Some(node);
    let version = ctl(&["version"]).await.unwrap_or_else(|e| e.to_string());
    let limit = eval_int("erlang:system_info(process_limit).")
        .await
        .map_or_else(|e| e.to_string(), |l| l.to_string());
    println!("RabbitMQ {version}; Erlang process limit {limit}");
    let mut rows = Vec::new();
    let outcome = tokio::select! {
        outcome = run(&url, &mut rows) => outcome,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    let node = NODE.lock().unwrap().take();
    tokio::task::spawn_blocking(move || drop(node))
        .await
        .unwrap();
    println!("{}", table(&rows));
    if let Err(e) = outcome {
        eprintln!("queue_cost failed: {e}");
        std::process::exit(1);
    }
}
