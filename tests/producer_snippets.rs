//! The producer snippets of README.md's "Producers" section, run as a
//! producer runs them: `examples/producer.py` (pika) and
//! `examples/producer.mjs` (amqplib) each publish one job, with `reply_to`,
//! `correlation_id` and an `x-deadline`, to a test app's jobs queue, and
//! must print the job's receipt and exit 0 once the worker delivered it.
//! README.md must show each file as it is. Their interpreters and packages
//! come from `.ci/snippets.sh`; without them these tests fail, saying so.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use testkit::*;
use tokio::process::Command;

const SETUP: &str = "run .ci/snippets.sh first (it installs pika into target/ci-venv \
                     and amqplib into examples/node_modules)";

/// What a snippet may take, receipt included.
const SNIPPET_TIMEOUT: Duration = Duration::from_secs(90);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// `target/ci-venv/bin/python examples/producer.py`, once pika is there.
async fn python_snippet() -> Command {
    let python = repo("target/ci-venv/bin/python");
    assert!(python.exists(), "{} is missing: {SETUP}", python.display());
    let pika = Command::new(&python)
        .args(["-c", "import pika"])
        .output()
        .await
        .unwrap_or_else(|e| panic!("{} does not run ({e}): {SETUP}", python.display()));
    assert!(
        pika.status.success(),
        "pika is not installed in target/ci-venv: {SETUP}"
    );
    let mut command = Command::new(python);
    command.arg(repo("examples/producer.py"));
    command
}

/// `node examples/producer.mjs`, once node and amqplib are there.
async fn node_snippet() -> Command {
    let version = Command::new("node")
        .arg("--version")
        .output()
        .await
        .unwrap_or_else(|e| panic!("node does not run ({e}): install Node.js, then {SETUP}"));
    assert!(version.status.success(), "node --version failed: {SETUP}");
    assert!(
        repo("examples/node_modules/amqplib/package.json").exists(),
        "amqplib is not installed in examples/node_modules: {SETUP}"
    );
    let mut command = Command::new("node");
    command.arg(repo("examples/producer.mjs"));
    command
}

/// Runs a snippet against a test app's worker and checks what it printed
/// and what the simulator received.
async fn publishes_and_hears_its_receipt(test: &str, mut snippet: Command) {
    let mut app = spawn_app(test, 5.0).await;
    app.start_worker();
    let text = format!("{} from a producer snippet", app.prefix);
    snippet
        .current_dir(repo("."))
        .env("AMQP_URL", AMQP_URL)
        .env("BROADCAST_QUEUE", &app.names.jobs)
        .env("BROADCAST_TEXT", &text)
        .env("RECEIPT_TIMEOUT_SECS", "60")
        .kill_on_drop(true);
    let Output {
        status,
        stdout,
        stderr,
    } = tokio::time::timeout(SNIPPET_TIMEOUT, snippet.output())
        .await
        .unwrap_or_else(|_| panic!("{test}: the snippet still ran after {SNIPPET_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{test}: the snippet does not start ({e}): {SETUP}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr),
    );
    assert!(
        status.success(),
        "{test}: the snippet exited with {status}\nstdout: {stdout}\nstderr: {stderr}"
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{test}: the snippet prints its receipt on one line, printed: {stdout}"
    );
    let receipt: Value = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("{test}: the receipt is not JSON ({e}): {}", lines[0]));
    assert_eq!(receipt["outcome"], "delivered", "{test}: {receipt}");
    assert!(
        receipt["MsgSeq"].as_u64().is_some_and(|seq| seq >= 1),
        "{test}: a delivered receipt carries the service's MsgSeq: {receipt}"
    );
    assert!(
        receipt["message_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{test}: the snippet sets a message_id, and its receipt carries it: {receipt}"
    );
    assert_eq!(receipt["sdkappid"], APP, "{test}: {receipt}");
    // The receipt is published after the job's ack, so its call is in.
    assert_eq!(
        app.delivered_texts().get(&text).copied(),
        Some(1),
        "{test}: the simulator received the snippet's text once"
    );
    app.stop_worker().await.expect("the worker stops cleanly");
}

#[tokio::test]
async fn the_python_snippet_publishes_a_job_and_prints_its_receipt() {
    let snippet = python_snippet().await;
    publishes_and_hears_its_receipt("snippets-py", snippet).await;
}

#[tokio::test]
async fn the_node_snippet_publishes_a_job_and_prints_its_receipt() {
    let snippet = node_snippet().await;
    publishes_and_hears_its_receipt("snippets-node", snippet).await;
}

/// README.md shows each snippet as the file is, in a fenced block of its
/// language, so what a reader copies is what these tests run.
#[test]
fn readme_shows_each_snippet_verbatim() {
    let readme = read("README.md");
    for (path, fences) in [
        ("examples/producer.py", &["python", "py"][..]),
        ("examples/producer.mjs", &["javascript", "js", "mjs"][..]),
    ] {
        let snippet = read(path);
        let body = snippet.trim_end();
        let shown = fences
            .iter()
            .any(|fence| readme.contains(&format!("```{fence}\n{body}\n```")));
        assert!(
            shown,
            "README.md must show {path} verbatim in a ```{} block (paste the file as it is)",
            fences[0]
        );
    }
}
