//! Figures for a cluster: the node both replicas use killed (SIGKILL), and
//! each node restarted in turn (a rolling upgrade), each in the middle of a
//! drain of 3,000 jobs (10 a call, 5 calls/s, the ledger, two replica
//! processes), five runs of each on one three-node cluster of private
//! RabbitMQ nodes. Run with `cargo bench --bench cluster` (root, RabbitMQ's
//! `rabbitmq-server`, PostgreSQL on 127.0.0.1); prints a Markdown table and
//! writes it into BENCHMARKS.md.

#[path = "../tests/support/cluster_drills.rs"]
mod drills;

use drills::*;
use testkit::*;

const RUNS: usize = 5;

const NOTES: &str = "\
Lost or doubled: jobs the simulator did not count exactly once after its repeat
filter. Sending again: from the loss (the kill, or the stop of a node) to the next
call the simulator received; in a rolling restart most stops hit a node no replica
was on, so the next call comes at the bucket's next permit.";

fn main() {
    let dir = std::env::temp_dir().join(format!("bw-cluster-bench-{}", std::process::id()));
    let ca = TestCa::create(&dir, "cluster-bench");
    let cluster = cluster_with_tls(&ca);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    runtime.block_on(async {
        for (what, kill) in [("node killed", true), ("rolling restart", false)] {
            let mut drains = Vec::new();
            for run in 0..RUNS {
                let drain = if kill {
                    a_killed_node(&cluster).await
                } else {
                    a_rolling_restart(&cluster).await
                };
                eprintln!(
                    "{what} run {}: wrong {:?}, frequency {}, dead {}, resumed {:?} ms",
                    run + 1,
                    drain.wrong,
                    drain.frequency_answers,
                    drain.dead_letters,
                    drain.resumed_ms
                );
                drains.push(drain);
            }
            rows.push(row(what, &drains));
        }
    });
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    let table = format!(
        "| drill ({RUNS} runs each) | lost or doubled | frequency-limit answers | dead letters | sending again (ms, each loss) |\n|---|---|---|---|---|\n{}",
        rows.join("")
    );
    println!("{table}");
    write_section(
        "BENCHMARKS.md",
        "Cluster: node loss and rolling restarts",
        &format!(
            "## Cluster: `cargo bench --bench cluster`\n\n{}. Three private nodes, two replica processes with the ledger, 3,000 jobs (10 a call, 5 calls/s) per run.\n\n{table}\n{NOTES}\n",
            machine()
        ),
    );
}

fn row(what: &str, drains: &[Drain]) -> String {
    let wrong: usize = drains.iter().map(|d| d.wrong.len()).sum();
    let frequency: u64 = drains.iter().map(|d| d.frequency_answers).sum();
    let dead: u32 = drains.iter().map(|d| d.dead_letters).sum();
    let resumed: Vec<u64> = drains.iter().flat_map(|d| d.resumed_ms.clone()).collect();
    let max = resumed.iter().max().copied().unwrap_or(0);
    format!("| {what} | {wrong} | {frequency} | {dead} | {resumed:?} (max {max}) |\n")
}
