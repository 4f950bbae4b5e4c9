//! The binary as operators run it: `usersig sign|verify` and `simulate`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use broadcast_worker::tencent::body::BroadcastBody;
use broadcast_worker::tencent::client::{ApiClient, ApiConfig};
use broadcast_worker::tencent::usersig::unix_now;
use broadcast_worker::tencent::usersig::{self, Claims, SecretKey};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

fn cmd() -> Command {
    let mut c = Command::new(BIN);
    for var in [
        "TIM_SDKAPPID",
        "TIM_IDENTIFIER",
        "TIM_SECRET_KEY",
        "TIM_SECRET_KEY_FILE",
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
    let mut child = cmd()
        .args([
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--sdkappid",
            "1400000000",
        ])
        .args(["--identifier", "administrator", "--rate", rate])
        .args(extra)
        .env("TIM_SECRET_KEY", "cli-sim-key")
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
                time: unix_now(),
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
            time: unix_now(),
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
