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
            time: unix_now(),
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
