//! What reading a large dead-letter queue costs: 100,000 dead letters of
//! about 100 bytes with the worker's headers, published straight to the
//! dead-letter exchange, and the peak resident memory and time of `dlq list
//! --limit 10`, `dlq list --newest-first --limit 10` and `dlq show` of the
//! last one, against the same command with an empty queue. Run with `cargo
//! bench --bench dlq` (RabbitMQ on 127.0.0.1); `BENCH_DEAD_LETTERS` changes
//! the count. Prints a Markdown table and, run whole, writes it into
//! BENCHMARKS.md.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

type Rows = Vec<(String, String)>;

const HOW_TO_READ: &str = "\
Every `dlq` command reads the queue one message at a time (each taken unacked until
the command ends) and keeps only what it prints or acts on: `list` the headers of
the rows it shows (a ring of the last ten for `--newest-first`) and a count per
reason and code, `show` the one dead letter it looks for. Memory follows what is
printed, not the queue. Before it did, `dlq list --limit 10` held every dead letter
it read: 52 MiB at 20,000 and 186 MiB at 100,000 on this machine.

The time is one `basic.get` per dead letter, each a command the quorum queue writes
to its log: about 1.5 ms at 10,000 here, 3 to 5 ms at 100,000 (the reading did not
change). `show` stops at the one it looks for. A reading gives the messages back in
no set order, so each command finds a given dead letter elsewhere than the one
before it did.";

fn id(i: usize) -> String {
    format!("dead-{i:07}")
}

/// A dead letter as the worker writes it: the job's ~100-byte body, its id,
/// and the headers that say why.
fn dead_letter(i: usize, now_ms: i64) -> (Vec<u8>, BasicProperties) {
    let body = format!(
        r#"{{"MsgBody":[{{"MsgType":"TIMTextElem","MsgContent":{{"Text":"{} refused"}}}}]}}"#,
        id(i)
    );
    let mut headers = FieldTable::default();
    let mut set = |name: &str, value: AMQPValue| {
        headers.insert(name.into(), value);
    };
    set("x-reason", AMQPValue::LongString("rejected".into()));
    set("x-error-code", AMQPValue::LongLongInt(80001));
    set(
        "x-error-info",
        AMQPValue::LongString("content moderation".into()),
    );
    set("x-attempts", AMQPValue::LongLongInt(1));
    set("x-first-seen", AMQPValue::LongLongInt(now_ms - 2000));
    set("x-dead-lettered-at", AMQPValue::LongLongInt(now_ms));
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(id(i).into())
        .with_headers(headers);
    (body.into_bytes(), properties)
}

/// Publishes `n` dead letters to the dead-letter exchange.
async fn fill(app: &TestApp, n: usize) {
    let now_ms = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    app.publish_dead_letters((0..n).map(|i| dead_letter(i, now_ms)), 2000)
        .await;
}

/// Runs `broadcast-worker dlq ARGS` measured: its standard output, the peak
/// in MiB, and the time it took.
async fn measured(app: &TestApp, args: &[&str]) -> (String, f64, Duration) {
    let mut command = Command::new(BIN);
    command
        .arg("dlq")
        .args(args)
        .env("AMQP_URL", AMQP_URL)
        .env("BROADCAST_QUEUE_PREFIX", &app.prefix);
    let run = run_measured(command).await;
    assert!(run.status.success(), "dlq {args:?} failed: {}", run.stdout);
    (run.stdout, run.peak_mib, run.took)
}

fn figure(peak_mib: f64, took: Duration) -> String {
    format!("{peak_mib:.1} MiB, {:.1} s", took.as_secs_f64())
}

async fn reading(n: usize, rows: &mut Rows) {
    let app = spawn_app("dlq-bench", 100.0).await;
    let (_, empty, took) = measured(&app, &["list", "--limit", "10"]).await;
    rows.push((
        "`dlq list --limit 10`, empty queue: peak resident memory, time".into(),
        figure(empty, took),
    ));
    let started = Instant::now();
    fill(&app, n).await;
    app.wait_for_len(&app.names.dead, n as u32).await;
    rows.push((
        format!("fill: {n} dead letters (~100-byte bodies, 6 headers) published to the exchange"),
        format!("{:.1} s", started.elapsed().as_secs_f64()),
    ));
    let (out, peak, took) = measured(&app, &["list", "--limit", "10"]).await;
    assert!(
        out.contains(&format!("{n} of {n} dead letters match")),
        "{out}"
    );
    rows.push((
        format!("`dlq list --limit 10`, {n} dead letters: peak resident memory, time"),
        figure(peak, took),
    ));
    let (out, peak, took) = measured(&app, &["list", "--newest-first", "--limit", "10"]).await;
    assert_eq!(out.lines().count(), 12, "{out}");
    rows.push((
        format!("`dlq list --newest-first --limit 10`, {n} dead letters"),
        figure(peak, took),
    ));
    // Reading gives the messages back in no set order: show the last one read.
    let last = out
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let (out, peak, took) = measured(&app, &["show", last]).await;
    assert!(out.contains(last), "{out}");
    rows.push((
        format!("`dlq show` of the last of {n} dead letters"),
        figure(peak, took),
    ));
    app.wait_for_len(&app.names.dead, n as u32).await;
}

#[tokio::main]
async fn main() {
    let n = std::env::var("BENCH_DEAD_LETTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut rows: Rows = Vec::new();
    reading(n, &mut rows).await;
    let table = markdown_table(&rows);
    println!("{table}");
    let section = format!(
        "## Reading the dead-letter queue: `cargo bench --bench dlq`\n\n\
         Run on {}: {}. Peak resident memory is the high-water mark (`VmHWM`) sampled\n\
         every 2 ms until the command exits.\n\n{table}\n{HOW_TO_READ}",
        today(),
        machine()
    );
    write_section(
        concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md"),
        "dlq",
        &section,
    );
}
