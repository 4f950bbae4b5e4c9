//! The binary as operators run it: `usersig sign|verify`, `simulate`, and
//! the operator commands' `--app`, which picks one app of a fleet's apps
//! file (its queues, its settings, its ledger records).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use broadcast_worker::broker::{self, QueueNames, Topology};
use broadcast_worker::clock::now_secs;
use broadcast_worker::ledger::{CallJob, Ledger, Scope};
use broadcast_worker::tencent::body::BroadcastBody;
use broadcast_worker::tencent::client::{ApiClient, ApiConfig};
use broadcast_worker::tencent::usersig::{self, Claims, SecretKey};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::{json, Value};
use testkit::{connect, delete_topology, unique_prefix, TestDatabase, AMQP_URL};

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

fn cmd() -> Command {
    let mut c = Command::new(BIN);
    for var in [
        "TIM_SDKAPPID",
        "TIM_IDENTIFIER",
        "TIM_SECRET_KEY",
        "TIM_SECRET_KEY_FILE",
        "BROADCAST_APPS_FILE",
    ] {
        c.env_remove(var);
    }
    c
}

#[test]
fn usersig_verify_accepts_the_reference_vectors() {
    let vectors: Value = serde_json::from_str(include_str!("data/usersig_vectors.json")).unwrap();
    for v in vectors["vectors"].as_array().unwrap() {
        let run = |key: &str, at: u64| {
            cmd()
                .args([
                    "usersig",
                    "verify",
                    "--sdkappid",
                    &v["sdkappid"].to_string(),
                ])
                .args(["--identifier", v["identifier"].as_str().unwrap()])
                .args(["--at", &at.to_string()])
                .arg(v["usersig"].as_str().unwrap())
                .env("TIM_SECRET_KEY", key)
                .output()
                .unwrap()
        };
        let (key, time, expire) = (
            v["key"].as_str().unwrap(),
            v["time"].as_u64().unwrap(),
            v["expire"].as_u64().unwrap(),
        );
        let ok = run(key, time);
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let report: Value = serde_json::from_slice(&ok.stdout).unwrap();
        assert_eq!(report["identifier"], v["identifier"]);
        assert_eq!(report["expires_at"], time + expire);
        // The secret key never appears in what the command prints.
        assert!(!String::from_utf8_lossy(&ok.stdout).contains(key));

        let late = run(key, time + expire + 1);
        assert!(!late.status.success());
        assert!(String::from_utf8_lossy(&late.stderr).contains("expired"));
        let other = run("not-the-key", time);
        assert!(!other.status.success());
        assert!(String::from_utf8_lossy(&other.stderr).contains("signature"));
    }
}

#[test]
fn usersig_sign_output_verifies_and_reads_the_key_from_a_file() {
    let key_file = std::env::temp_dir().join(format!("bw-cli-key-{}", std::process::id()));
    std::fs::write(&key_file, "file-key\n").unwrap();
    let signed = cmd()
        .args([
            "usersig",
            "sign",
            "--sdkappid",
            "20001234",
            "--identifier",
            "admin",
            "--expire",
            "600",
        ])
        .env("TIM_SECRET_KEY_FILE", &key_file)
        .output()
        .unwrap();
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let sig = String::from_utf8(signed.stdout).unwrap();
    let verified = cmd()
        .args([
            "usersig",
            "verify",
            "--sdkappid",
            "20001234",
            "--identifier",
            "admin",
            "-",
        ])
        .env("TIM_SECRET_KEY", "file-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(sig.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    std::fs::remove_file(&key_file).unwrap();
}

#[test]
fn a_missing_secret_is_a_clear_error() {
    let out = cmd()
        .args([
            "usersig",
            "sign",
            "--sdkappid",
            "1",
            "--identifier",
            "admin",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("secret key is missing"));
}

/// `simulate` as a child process, killed on drop.
struct Simulate(Child);

impl Drop for Simulate {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn simulate(rate: &str) -> (Simulate, String) {
    simulate_with(rate, &[])
}

/// `simulate` with extra flags.
fn simulate_with(rate: &str, extra: &[&str]) -> (Simulate, String) {
    let mut command = cmd();
    command
        .args([
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--sdkappid",
            "1400000000",
        ])
        .args(["--identifier", "administrator", "--rate", rate])
        .args(extra)
        .env("TIM_SECRET_KEY", "cli-sim-key");
    listening(command)
}

/// Starts `simulate` and reads the address it prints first.
fn listening(mut command: Command) -> (Simulate, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("simulator listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (Simulate(child), url)
}

fn body(text: &str, random: u32) -> Vec<u8> {
    BroadcastBody {
        from_account: None,
        random,
        msg_body: vec![json!({"MsgType": "TIMTextElem", "MsgContent": {"Text": text}})],
        cloud_custom_data: None,
    }
    .to_bytes()
}

#[tokio::test]
async fn simulate_answers_as_documented() {
    let (_sim, url) = simulate("1");
    let client = ApiClient::new(&ApiConfig::new(
        url.parse().unwrap(),
        1400000000,
        "administrator",
    ))
    .unwrap();
    let sign = |key: &str| {
        usersig::sign(
            &SecretKey::new(key),
            &Claims {
                identifier: "administrator".into(),
                sdkappid: 1400000000,
                time: now_secs(),
                expire: 3600,
                userbuf: None,
            },
        )
    };
    let good = sign("cli-sim-key");

    let ok = client
        .send_broadcast(&good, body("hello", 1))
        .await
        .unwrap();
    assert_eq!((ok.error_code, ok.action_status.as_str()), (0, "OK"));
    assert!(ok.msg_seq.is_some());
    // Second call within the same second at --rate 1.
    assert_eq!(
        client
            .send_broadcast(&good, body("again", 2))
            .await
            .unwrap()
            .error_code,
        10023
    );
    // Wrong key (checked before the frequency limit).
    assert_eq!(
        client
            .send_broadcast(&sign("wrong"), body("x", 3))
            .await
            .unwrap()
            .error_code,
        70009
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let pad = 12_001 - body("", 4).len();
    let big = body(&"y".repeat(pad), 4);
    assert_eq!(big.len(), 12_001);
    assert_eq!(
        client.send_broadcast(&good, big).await.unwrap().error_code,
        80002
    );
}

#[tokio::test]
async fn simulate_repeat_by_random_drops_other_content_under_the_same_random() {
    let (_sim, url) = simulate_with("100", &["--repeat-by", "random"]);
    let client = ApiClient::new(&ApiConfig::new(
        url.parse().unwrap(),
        1400000000,
        "administrator",
    ))
    .unwrap();
    let sig = usersig::sign(
        &SecretKey::new("cli-sim-key"),
        &Claims {
            identifier: "administrator".into(),
            sdkappid: 1400000000,
            time: now_secs(),
            expire: 3600,
            userbuf: None,
        },
    );
    let first = client.send_broadcast(&sig, body("one", 9)).await.unwrap();
    let again = client.send_broadcast(&sig, body("two", 9)).await.unwrap();
    assert_eq!((first.error_code, again.error_code), (0, 0));
    assert_eq!(again.msg_seq, first.msg_seq);
    let stats: Value = reqwest::get(format!("{url}/simulator/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            stats["deliveries"].as_u64(),
            stats["repeats_dropped"].as_u64()
        ),
        (Some(1), Some(1))
    );
}

#[test]
fn simulate_refuses_an_unknown_repeat_reading() {
    let out = cmd()
        .args(["simulate", "--sdkappid", "1400000000"])
        .args(["--identifier", "administrator", "--repeat-by", "content"])
        .env("TIM_SECRET_KEY", "cli-sim-key")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("content-and-random") && stderr.contains("random"),
        "{stderr}"
    );
}

/// An apps file of `[[app]]` tables in a directory of its own, each app's
/// key in a file beside it: (sdkappid, identifier, key, extra lines).
fn apps_file(test: &str, apps: &[(u64, &str, &str, &str)]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bw-cli-apps-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = String::new();
    for (sdkappid, identifier, key, extra) in apps {
        let key_file = dir.join(format!("{sdkappid}.key"));
        std::fs::write(&key_file, format!("{key}\n")).unwrap();
        text += &format!(
            "[[app]]\nsdkappid = {sdkappid}\nidentifier = {identifier:?}\nsecret_key_file = {:?}\n{extra}\n",
            key_file.display().to_string()
        );
    }
    let path = dir.join("apps.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn sig(key: &str, sdkappid: u64, identifier: &str) -> usersig::UserSig {
    usersig::sign(
        &SecretKey::new(key),
        &Claims {
            identifier: identifier.into(),
            sdkappid,
            time: now_secs(),
            expire: 3600,
            userbuf: None,
        },
    )
}

#[tokio::test]
async fn simulate_hosts_every_app_of_an_apps_file() {
    // B's entry gives no rate: it takes --rate 2.
    let file = apps_file(
        "hosts",
        &[
            (1400000001, "admin-a", "key-a", "rate = 1"),
            (1400000002, "admin-b", "key-b", ""),
        ],
    );
    let mut command = cmd();
    command
        .args(["simulate", "--listen", "127.0.0.1:0", "--rate", "2"])
        .env("BROADCAST_APPS_FILE", &file);
    let (_sim, url) = listening(command);
    let client = |sdkappid, identifier| {
        ApiClient::new(&ApiConfig::new(url.parse().unwrap(), sdkappid, identifier)).unwrap()
    };
    let (a, b) = (client(1400000001, "admin-a"), client(1400000002, "admin-b"));
    let code = |answer: Result<broadcast_worker::tencent::client::ApiResponse, _>| {
        answer.unwrap().error_code
    };
    let sig_a = sig("key-a", 1400000001, "admin-a");
    let sig_b = sig("key-b", 1400000002, "admin-b");
    assert_eq!(code(a.send_broadcast(&sig_a, body("a", 1)).await), 0);
    assert_eq!(code(a.send_broadcast(&sig_a, body("a", 2)).await), 10023);
    assert_eq!(code(b.send_broadcast(&sig_b, body("b", 1)).await), 0);
    assert_eq!(code(b.send_broadcast(&sig_b, body("b", 2)).await), 0);
    // B's key does not sign for A.
    let wrong = sig("key-b", 1400000001, "admin-a");
    assert_eq!(code(a.send_broadcast(&wrong, body("a", 3)).await), 70009);
    let nobody = client(1400000003, "admin-a");
    let sig_c = sig("key-a", 1400000003, "admin-a");
    assert_eq!(
        code(nobody.send_broadcast(&sig_c, body("c", 1)).await),
        70020
    );

    let stats: Value = reqwest::get(format!("{url}/simulator/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["1400000001"]["deliveries"], 1);
    assert_eq!(stats["1400000001"]["frequency_violations"], 1);
    assert_eq!(stats["1400000002"]["deliveries"], 2);
    let refused = reqwest::get(format!("{url}/simulator/deliveries"))
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
}

#[test]
fn simulate_names_each_mistake_of_a_bad_apps_file() {
    let file = apps_file(
        "bad",
        &[
            (1400000001, "admin", "secret-in-the-file", "rate = 0"),
            (1400000001, "admin", "secret-in-the-file", ""),
        ],
    );
    // No TIM_SDKAPPID, TIM_IDENTIFIER or secret: the file stands in for them.
    let out = cmd()
        .args(["simulate", "--listen", "127.0.0.1:0", "--apps-file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has 2 mistake(s)"), "{stderr}");
    assert!(
        stderr.contains("#1 (sdkappid 1400000001): rate 0 is out of range"),
        "{stderr}"
    );
    assert!(
        stderr.contains("sdkappid 1400000001 is given twice"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret-in-the-file"), "{stderr}");

    let missing = cmd()
        .args(["simulate", "--apps-file", "/no/such/apps.toml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("cannot read the apps file /no/such/apps.toml"),
        "{stderr}"
    );
}

/// Two apps of a fleet's apps file under a queue prefix of the test's own:
/// A checks bodies against 256 bytes, B takes the default. Their queues
/// (and the single app's, under the bare prefix) and the key files are
/// removed when dropped, pass or fail.
struct TwoApps {
    prefix: String,
    dir: PathBuf,
    apps_file: PathBuf,
}

const APP_A: u64 = 1400000101;
const APP_B: u64 = 1400000102;
/// Both apps' secret key; it must never appear in what a command prints.
const FLEET_KEY: &str = "fleet-cli-secret-key";

impl TwoApps {
    fn new(test: &str) -> TwoApps {
        let prefix = unique_prefix(test);
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        let entry = |app: u64, extra: &str| {
            let key_file = dir.join(format!("{app}.key"));
            std::fs::write(&key_file, format!("{FLEET_KEY}\n")).unwrap();
            format!(
                "[[app]]\nsdkappid = {app}\nidentifier = \"administrator\"\nsecret_key_file = {:?}\n{extra}\n",
                key_file.display().to_string()
            )
        };
        let apps_file = dir.join("apps.toml");
        let text = entry(APP_A, "max_batch_bytes = 256") + &entry(APP_B, "");
        std::fs::write(&apps_file, text).unwrap();
        TwoApps {
            prefix,
            dir,
            apps_file,
        }
    }

    /// An app's queue as `run --apps-file` names it: `{prefix}.{app}.{kind}`.
    fn queue(&self, app: u64, kind: &str) -> String {
        format!("{}.{app}.{kind}", self.prefix)
    }

    /// App `app`'s queue names, as `run --apps-file` gives them.
    fn names(&self, app: u64) -> QueueNames {
        QueueNames::in_fleet(&self.prefix, app)
    }

    /// Declares both apps' queues (and retires their own dead-letter queues
    /// of the earlier layout), as a fleet's `run` does.
    async fn declare(&self, connection: &lapin::Connection) {
        for app in [APP_A, APP_B] {
            let topology = Topology {
                names: self.names(app),
                delivery_limit: 20,
            };
            topology.declare(connection).await.unwrap();
            broker::retire_own_dead(connection, &topology.names)
                .await
                .unwrap();
        }
    }

    /// The binary with this fleet's broker, prefix and apps file.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = cmd();
        command
            .args(args)
            .env("AMQP_URL", AMQP_URL)
            .env("BROADCAST_QUEUE_PREFIX", &self.prefix)
            .env("BROADCAST_APPS_FILE", &self.apps_file)
            .env_remove("BROADCAST_MAX_BATCH_BYTES")
            .env_remove("BROADCAST_CUSTOM_MERGE")
            .env_remove("BROADCAST_TEST_CRASH_AT");
        command
    }

    /// Runs the command; its exit code, standard output and standard error,
    /// none of which may hold the secret key.
    fn run(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = self.command(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !stdout.contains(FLEET_KEY) && !stderr.contains(FLEET_KEY),
            "the secret key printed by {args:?}"
        );
        (out.status.code(), stdout, stderr)
    }
}

impl Drop for TwoApps {
    fn drop(&mut self) {
        for app in [APP_A, APP_B] {
            delete_topology(&format!("{}.{app}", self.prefix));
        }
        delete_topology(&self.prefix);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Messages ready in a queue, polled until it holds `n` (a quorum queue
/// counts asynchronously); the last count if it never does.
async fn len_becomes(connection: &lapin::Connection, queue: &str, n: u32) -> u32 {
    let channel = connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let mut len = u32::MAX;
    for _ in 0..40 {
        len = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("{queue} is declared: {e}"))
            .message_count();
        if len == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = channel.close(200, "".into()).await;
    len
}

#[tokio::test]
async fn enqueue_app_publishes_to_that_apps_queue_checked_with_its_settings() {
    let fleet = TwoApps::new("cli-enqueue-app");
    let connection = connect().await;
    fleet.declare(&connection).await;
    let a = APP_A.to_string();
    let b = APP_B.to_string();

    let (code, stdout, stderr) = fleet.run(&["enqueue", "--app", &a, "--text", "for A"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("published 1, invalid 0"), "{stdout}");
    assert_eq!(
        len_becomes(&connection, &fleet.queue(APP_A, "jobs"), 1).await,
        1
    );
    assert_eq!(
        len_becomes(&connection, &fleet.queue(APP_B, "jobs"), 0).await,
        0
    );

    // A's entry limits its calls to 256 bytes; B's takes the flag's default.
    let long = "x".repeat(400);
    let (code, _, stderr) = fleet.run(&["enqueue", "--app", &a, "--text", &long]);
    assert_eq!(code, Some(1), "refused by A's max_batch_bytes: {stderr}");
    assert!(stderr.contains("line 1: not published"), "{stderr}");
    let (code, _, stderr) = fleet.run(&["enqueue", "--app", &b, "--text", &long]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        len_becomes(&connection, &fleet.queue(APP_B, "jobs"), 1).await,
        1
    );
    assert_eq!(
        len_becomes(&connection, &fleet.queue(APP_A, "jobs"), 1).await,
        1
    );

    // --urgent: A's urgent lane, with the latest-wins key as its header;
    // a key over 255 bytes is refused before anything is published.
    let (code, _, stderr) = fleet.run(&[
        "enqueue",
        "--app",
        &a,
        "--urgent",
        "--coalesce-key",
        "score",
        "--text",
        "now",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let urgent = fleet.queue(APP_A, "urgent");
    assert_eq!(len_becomes(&connection, &urgent, 1).await, 1);
    let channel = connection.create_channel().await.unwrap();
    // (A single-active-consumer queue refuses basic.get: consumed instead.)
    let mut consumer = channel
        .basic_consume(
            urgent.as_str().into(),
            "".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let got = futures_util::StreamExt::next(&mut consumer)
        .await
        .expect("the urgent job")
        .unwrap();
    let headers = got.properties.headers().clone().unwrap();
    assert_eq!(
        headers.inner()["x-coalesce-key"],
        AMQPValue::LongString("score".into())
    );
    let _ = channel.close(200, "read".into()).await;
    let long_key = "k".repeat(256);
    let (code, _, stderr) = fleet.run(&[
        "enqueue",
        "--app",
        &a,
        "--coalesce-key",
        &long_key,
        "--text",
        "x",
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("1 to 255 bytes"), "{stderr}");
    assert_eq!(
        len_becomes(&connection, &fleet.queue(APP_A, "jobs"), 1).await,
        1
    );

    // Without --app, the single app's queue, as before (the file unread).
    let (code, _, stderr) = fleet.run(&["enqueue", "--text", "for the single app"]);
    assert_eq!(code, Some(0), "{stderr}");
    let single = format!("{}.jobs", fleet.prefix);
    assert_eq!(len_becomes(&connection, &single, 1).await, 1);
}

/// A dead letter as the worker writes it, with id `id`.
fn dead_letter(id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("x-reason".into(), AMQPValue::LongString("rejected".into()));
    headers.insert("x-error-code".into(), AMQPValue::LongLongInt(80001));
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(id.into())
        .with_headers(headers)
}

/// `dlq list --app`'s ids and total, as JSON gives them.
fn listed(fleet: &TwoApps, app: u64) -> (u64, Vec<String>) {
    let app = app.to_string();
    let (code, stdout, stderr) = fleet.run(&["dlq", "list", "--app", &app, "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let listed: Value = serde_json::from_str(&stdout).unwrap();
    let ids = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap().to_string())
        .collect();
    (listed["total"].as_u64().unwrap(), ids)
}

#[tokio::test]
async fn dlq_app_reads_and_replays_that_apps_dead_letters_of_the_fleets_queue() {
    let fleet = TwoApps::new("cli-dlq-app");
    let connection = connect().await;
    fleet.declare(&connection).await;
    let shared = format!("{}.dead", fleet.prefix);
    assert_eq!(fleet.names(APP_A).dead, shared);
    let channel = broker::confirm_channel(&connection).await.unwrap();
    // As the worker publishes them: to the app's exchange, under its jobs
    // queue's name; one of B's claims to be A's in a producer's header.
    let mut claims_a = dead_letter("b-dead-2");
    let mut headers = claims_a.headers().clone().unwrap();
    headers.insert(
        "x-first-death-queue".into(),
        AMQPValue::LongString(fleet.queue(APP_A, "jobs").into()),
    );
    claims_a = claims_a.with_headers(headers);
    for (app, properties) in [
        (APP_A, dead_letter("a-dead-1")),
        (APP_B, dead_letter("b-dead-1")),
        (APP_B, claims_a),
    ] {
        let route = fleet.names(app).dead_route();
        broker::publish_confirmed(
            &channel,
            &route.exchange,
            &route.routing_key,
            b"{}",
            properties,
        )
        .await
        .unwrap();
    }
    assert_eq!(len_becomes(&connection, &shared, 3).await, 3);
    assert_eq!(
        listed(&fleet, APP_B),
        (2, vec!["b-dead-1".to_string(), "b-dead-2".to_string()])
    );
    assert_eq!(listed(&fleet, APP_A), (1, vec!["a-dead-1".to_string()]));
    assert_eq!(
        len_becomes(&connection, &shared, 3).await,
        3,
        "reading moved none"
    );
    let a = APP_A.to_string();
    let b = APP_B.to_string();

    let (code, _, stderr) = fleet.run(&["dlq", "show", "a-dead-1", "--app", &b]);
    assert_eq!(code, Some(1), "A's dead letter is not B's");
    assert!(stderr.contains(&shared), "{stderr}");
    let (code, stdout, stderr) = fleet.run(&["dlq", "show", "a-dead-1", "--app", &a]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("a-dead-1"), "{stdout}");

    // Replayed to A's jobs queue, and nowhere else; B's stay.
    let (code, stdout, stderr) = fleet.run(&["dlq", "replay", "--app", &a, "--all"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(&format!(
            "replayed 1 job(s) to {}",
            fleet.queue(APP_A, "jobs")
        )),
        "{stdout}"
    );
    assert_eq!(
        len_becomes(&connection, &fleet.queue(APP_A, "jobs"), 1).await,
        1
    );
    assert_eq!(len_becomes(&connection, &shared, 2).await, 2);
    assert_eq!(
        len_becomes(&connection, &fleet.queue(APP_B, "jobs"), 0).await,
        0
    );
    assert_eq!(listed(&fleet, APP_A), (0, vec![]));
    // Purging A's (none left) leaves B's alone.
    let (code, _, stderr) = fleet.run(&["dlq", "purge", "--app", &a, "--all", "--yes"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(listed(&fleet, APP_B).0, 2);
}

#[tokio::test]
async fn an_apps_own_dead_letter_queue_of_the_earlier_layout_is_emptied_into_the_fleets() {
    let fleet = TwoApps::new("cli-dlq-retire");
    let connection = connect().await;
    // The layout before: A's own `{prefix}.A.dead`, bound to its exchange,
    // holding two dead letters.
    let own = fleet.queue(APP_A, "dead");
    let names = fleet.names(APP_A);
    let channel = broker::confirm_channel(&connection).await.unwrap();
    channel
        .exchange_declare(
            names.dlx.as_str().into(),
            lapin::ExchangeKind::Fanout,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            own.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            own.as_str().into(),
            names.dlx.as_str().into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for id in ["old-1", "old-2"] {
        broker::publish_confirmed(&channel, &names.dlx, "", b"{}", dead_letter(id))
            .await
            .unwrap();
    }
    assert_eq!(len_becomes(&connection, &own, 2).await, 2);

    // A replica of this version declares the fleet's topology.
    fleet.declare(&connection).await;
    let gone = connection
        .create_channel()
        .await
        .unwrap()
        .queue_declare(
            own.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(gone.is_err(), "A's own dead-letter queue is deleted");
    assert_eq!(
        listed(&fleet, APP_A),
        (2, vec!["old-1".to_string(), "old-2".to_string()])
    );
    assert_eq!(listed(&fleet, APP_B), (0, vec![]));
    // A new dead letter of A reaches the fleet's queue, once.
    let route = names.dead_route();
    broker::publish_confirmed(
        &channel,
        &route.exchange,
        &route.routing_key,
        b"{}",
        dead_letter("new-1"),
    )
    .await
    .unwrap();
    assert_eq!(len_becomes(&connection, &names.dead, 3).await, 3);
    assert_eq!(listed(&fleet, APP_A).0, 3);
}

#[tokio::test]
async fn jobs_show_app_finds_that_apps_record_of_a_shared_id() {
    let fleet = TwoApps::new("cli-jobs-app");
    let db = TestDatabase::create("cli-jobs-app").await;
    let ledger = Ledger::connect_lazy(&db.url()).unwrap();
    ledger.migrate().await.unwrap();
    // Each app recorded a call of its own job "shared-7".
    for (random, app) in [(1, APP_A), (2, APP_B)] {
        let session = Ledger::connect_lazy(&db.url())
            .unwrap()
            .in_scope(Scope::new(app, fleet.queue(app, "jobs")))
            .open_session()
            .await
            .unwrap();
        let job = CallJob {
            id: "shared-7".into(),
            replays: 0,
            digest: None,
        };
        let begun = session
            .begin_call(b"{}", random, &[random as u8; 32], &[job], None)
            .await
            .unwrap();
        assert!(begun.recorded().is_some(), "{app}'s call is recorded");
    }
    let show = |extra: &[&str], unset: &[&str]| {
        let mut args = vec!["jobs", "show", "shared-7", "--json"];
        args.extend_from_slice(extra);
        let mut command = fleet.command(&args);
        command.env("DATABASE_URL", db.url());
        for var in unset {
            command.env_remove(var);
        }
        let out = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stdout, stderr)
    };
    for app in [APP_A, APP_B] {
        let (code, stdout, stderr) = show(&["--app", &app.to_string()], &[]);
        assert_eq!(code, Some(0), "{stderr}");
        let report: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(report["app"].as_u64(), Some(app), "{report}");
        assert_eq!(
            report["queue"].as_str(),
            Some(fleet.queue(app, "jobs").as_str())
        );
    }
    // Without --app, as before: the prefix names the single app's queue,
    // where neither is; with no prefix the id names both.
    let (code, _, stderr) = show(&[], &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("knows no job"), "{stderr}");
    let (code, _, stderr) = show(&[], &["BROADCAST_QUEUE_PREFIX"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("names 2 jobs"), "{stderr}");
}

#[test]
fn app_needs_the_apps_file_and_one_of_its_apps() {
    let fleet = TwoApps::new("cli-app-errors");
    // A's entry with a mistake of its own.
    let broken = fleet.dir.join("broken.toml");
    let text = std::fs::read_to_string(&fleet.apps_file).unwrap();
    std::fs::write(&broken, text.replace("max_batch_bytes = 256", "rate = 0")).unwrap();
    let broken = broken.display().to_string();
    let (a, missing) = (APP_A.to_string(), "1400000999".to_string());
    let commands: [&[&str]; 3] = [
        &["enqueue", "--text", "hi"],
        &["dlq", "list"],
        &[
            "jobs",
            "show",
            "j1",
            "--database-url",
            "postgres://127.0.0.1:1/none",
        ],
    ];
    for args in commands {
        let not_in_file = [args, &["--app", &missing]].concat();
        let (code, _, stderr) = fleet.run(&not_in_file);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        let expected = format!(
            "app 1400000999 is not in the apps file {}; it has {APP_A}, {APP_B}",
            fleet.apps_file.display()
        );
        assert!(stderr.contains(&expected), "{args:?}: {stderr}");

        let no_file = [args, &["--app", &a]].concat();
        let out = fleet
            .command(&no_file)
            .env_remove("BROADCAST_APPS_FILE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("--app needs the apps file: set BROADCAST_APPS_FILE or --apps-file"),
            "{args:?}: {stderr}"
        );

        // The file's own mistakes, as `run` reports them.
        let broken_file = [args, &["--app", &a, "--apps-file", &broken]].concat();
        let (code, _, stderr) = fleet.run(&broken_file);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("the apps file {broken} has 1 mistake(s)"))
                && stderr.contains("(sdkappid 1400000101): rate 0 is out of range"),
            "{args:?}: {stderr}"
        );
    }
}
