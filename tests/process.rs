//! The `run` and `enqueue` commands as processes: signals, kills, restarts,
//! and what operators see on bad input or bad configuration.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

#[tokio::test]
async fn sigterm_mid_stream_loses_nothing_and_a_restart_finishes_the_work() {
    let app = spawn_app("sigterm", 2.0).await;
    let jobs = backlog("term", 600);
    app.publish_many(&jobs).await;
    let mut worker = worker_process(BIN, &app, &[]);
    app.wait_for("the first calls", Duration::from_secs(30), |app| {
        app.sim.simulator.stats().deliveries >= 2
    })
    .await;
    signal(&worker, "-TERM");
    let status = wait_exit(&mut worker, Duration::from_secs(20)).await;
    assert!(status.success(), "a graceful stop exits 0: {status:?}");

    let delivered = app.sim.simulator.stats().elements_delivered;
    assert!(delivered < 600, "the test needs a backlog left");
    let queued = app.jobs_waiting().await as u64;
    assert_eq!(
        delivered + queued,
        600,
        "{delivered} delivered + {queued} queued"
    );

    let mut second = worker_process(BIN, &app, &[]);
    app.wait_for_elements(600, Duration::from_secs(60)).await;
    signal(&second, "-TERM");
    wait_exit(&mut second, Duration::from_secs(20)).await;
    let texts = app.delivered_texts();
    for (id, body) in &jobs {
        assert_eq!(
            texts.get(&text_of(body)),
            Some(&1),
            "{id} delivered exactly once across a graceful stop"
        );
    }
}

#[tokio::test]
async fn a_killed_worker_loses_nothing_after_a_restart() {
    let app = spawn_app("sigkill", 4.0).await;
    let jobs = backlog("kill", 800);
    app.publish_many(&jobs).await;
    let mut worker = worker_process(BIN, &app, &[]);
    app.wait_for("some calls", Duration::from_secs(30), |app| {
        app.sim.simulator.stats().deliveries >= 3
    })
    .await;
    signal(&worker, "-KILL");
    wait_exit(&mut worker, Duration::from_secs(5)).await;

    let mut second = worker_process(BIN, &app, &[]);
    app.wait_for("every job delivered", Duration::from_secs(90), |app| {
        let texts = app.delivered_texts();
        jobs.iter()
            .all(|(_, body)| texts.contains_key(&text_of(body)))
    })
    .await;
    signal(&second, "-TERM");
    wait_exit(&mut second, Duration::from_secs(20)).await;
    let texts = app.delivered_texts();
    let repeats: usize = texts.values().map(|n| n - 1).sum();
    // At least once: a kill between a call and its acks may repeat a call's
    // jobs (the ledger removes that); nothing may be missing.
    eprintln!("jobs delivered more than once after the kill: {repeats}");
    assert_eq!(app.queue_len(&app.names.jobs).await, 0);
}

#[tokio::test]
async fn enqueue_publishes_good_lines_and_names_the_bad_ones() {
    let app = spawn_app("enqueue", 1.0).await;
    let mut input = tempfile_in("enqueue");
    writeln!(input.1, "{}", text_job("e-1")).unwrap();
    writeln!(input.1, "{{\"MsgBody\": [").unwrap();
    writeln!(input.1).unwrap();
    writeln!(input.1, "{}", serde_json::json!({"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": "x"}}], "Oops": 1})).unwrap();
    writeln!(input.1, "{}", text_job("e-2")).unwrap();
    let custom = serde_json::json!({"MsgType": "TIMCustomElem", "MsgContent": {"Data": "d"}});
    writeln!(
        input.1,
        "{}",
        serde_json::json!({"MsgBody": [custom.clone(), custom]})
    )
    .unwrap();
    input.1.flush().unwrap();
    let out = Command::new(BIN)
        .args(["enqueue", "--file", input.0.to_str().unwrap()])
        .env("AMQP_URL", AMQP_URL)
        .env("BROADCAST_QUEUE_PREFIX", &app.prefix)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "not everything was published: {stderr}"
    );
    assert!(
        stderr.contains("line 2: not published: invalid-json"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 4: not published: invalid-job: unknown field \"Oops\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 6: not published: invalid-job: MsgBody holds 2 TIMCustomElem elements; a message may hold only one"),
        "{stderr}"
    );
    assert!(
        stdout.contains("published 2, invalid 3, failed 0"),
        "{stdout}"
    );
    assert_eq!(app.queue_len(&app.names.jobs).await, 2);

    let out = Command::new(BIN)
        .args([
            "enqueue",
            "--text",
            "Match starts in 5 minutes",
            "--from-account",
            "system",
        ])
        .env("AMQP_URL", AMQP_URL)
        .env("BROADCAST_QUEUE_PREFIX", &app.prefix)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(app.queue_len(&app.names.jobs).await, 3);

    // Every published job carries a message_id.
    for delivery in app.consume(3).await {
        let id = delivery
            .properties
            .message_id()
            .clone()
            .expect("message_id set");
        assert_eq!(id.as_str().len(), 32);
    }
    let _ = std::fs::remove_file(input.0);
}

#[test]
fn run_refuses_bad_configuration_with_a_clear_message() {
    let base = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(BIN);
        c.arg("run").args(args);
        for var in [
            "TIM_SECRET_KEY",
            "TIM_SECRET_KEY_FILE",
            "BROADCAST_RATE",
            "TIM_BASE_URL",
            "AMQP_URL",
        ] {
            c.env_remove(var);
        }
        c.env("TIM_SDKAPPID", "1400000000")
            .env("TIM_IDENTIFIER", "admin");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(base(&[], &[]).contains("secret key is missing"));
    let key = [("TIM_SECRET_KEY", "k")];
    assert!(base(&[], &[key[0], ("BROADCAST_RATE", "0")])
        .contains("BROADCAST_RATE must be a positive number"));
    assert!(base(&[], &[key[0], ("TIM_BASE_URL", "::nope")])
        .contains("TIM_BASE_URL \"::nope\" is not a URL"));
    assert!(base(&[], &[key[0], ("AMQP_URL", "http://x")]).contains("AMQP_URL is not an AMQP URL"));
    assert!(base(&["--max-batch-bytes", "12001"], &key)
        .contains("BROADCAST_MAX_BATCH_BYTES must be from 256 to 12000"));
    assert!(base(&["--class-overrides", "10004=sometimes"], &key).contains("10004=sometimes"));
    let err = base(
        &[],
        &[
            ("TIM_SECRET_KEY", "topsecret-value"),
            ("BROADCAST_RATE", "-1"),
        ],
    );
    assert!(!err.contains("topsecret-value"), "{err}");
}

#[test]
fn a_world_readable_key_file_draws_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let (path, mut file) = tempfile_in("key");
    write!(file, "file-secret").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(BIN)
        .args([
            "usersig",
            "sign",
            "--sdkappid",
            "1",
            "--identifier",
            "admin",
        ])
        .env_remove("TIM_SECRET_KEY")
        .env("TIM_SECRET_KEY_FILE", &path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success());
    assert!(stderr.contains("readable by every user"), "{stderr}");
    assert!(
        !stderr.contains("file-secret")
            && !String::from_utf8_lossy(&out.stdout).contains("file-secret")
    );
    let _ = std::fs::remove_file(path);
}

fn tempfile_in(tag: &str) -> (std::path::PathBuf, std::fs::File) {
    let path = std::env::temp_dir().join(format!(
        "bw-{tag}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let file = std::fs::File::create(&path).unwrap();
    (path, file)
}
