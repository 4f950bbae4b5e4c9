//! What operators see: the metrics endpoint after a known run, readiness
//! during an app-wide fault, and logs that never carry a secret.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use broadcast_worker::simulator::{DropPoint, Fault, FaultPlan, FaultRule};
use broadcast_worker::tencent::usersig::{self, Claims, SecretKey};
use testkit::*;

const LONG: Duration = Duration::from_secs(60);

/// The worker binary with its ops endpoint on a free port; returns the
/// child and the endpoint's base URL.
fn worker_with_ops(app: &TestApp, extra: &[(&str, &str)]) -> (Child, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_broadcast-worker"));
    command
        .arg("run")
        .env("AMQP_URL", AMQP_URL)
        .env("BROADCAST_QUEUE_PREFIX", &app.prefix)
        .env("TIM_BASE_URL", app.sim.base_url().as_str())
        .env("TIM_SDKAPPID", APP.to_string())
        .env("TIM_IDENTIFIER", ADMIN)
        .env("TIM_SECRET_KEY", KEY)
        .env("BROADCAST_RATE", "50")
        .env("BROADCAST_METRICS_ADDR", "127.0.0.1:0")
        .env("BROADCAST_APP_FAULT_PROBE_SECS", "0.3")
        .env("BROADCAST_BACKOFF_MIN_MS", "20")
        .env("BROADCAST_BACKOFF_MAX_MS", "100")
        .env_remove("DATABASE_URL")
        .env_remove("TIM_SECRET_KEY_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in extra {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("ops endpoint listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();
    (child, url)
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The value of one sample line of the test app, e.g. `name{labels} 3`
/// (given without the `sdkappid` label every line of an app carries).
fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    let app = format!("sdkappid=\"{APP}\"");
    let name_and_labels = &match name_and_labels.split_once('{') {
        Some((name, labels)) => format!("{name}{{{app},{labels}"),
        None => format!("{name_and_labels}{{{app}}}"),
    };
    metrics
        .lines()
        .find(|line| {
            line.starts_with(name_and_labels) && line[name_and_labels.len()..].starts_with(' ')
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_reflect_a_known_run() {
    let app = spawn_app("metrics", 50.0).await;
    app.sim.simulator.set_faults(FaultPlan {
        rules: vec![FaultRule {
            body_contains: "POISON".into(),
            fault: Fault {
                code: Some(10004),
                ..Fault::default()
            },
        }],
        script: vec![Fault {
            code: Some(10002),
            ..Fault::default()
        }]
        .into(),
        ..FaultPlan::default()
    });
    for i in 0..5 {
        app.publish(&format!("m-{i}"), &text_job(&format!("m-{i}")))
            .await;
    }
    app.publish_raw(Some("m-bad"), b"nope", None).await;
    let mut poison = text_job("POISON");
    poison["From_Account"] = "other".into();
    app.publish("m-poison", &poison).await;
    let (mut worker, ops) = worker_with_ops(&app, &[]);
    app.wait_for_elements(5, LONG).await;
    app.wait_for_dead(2, LONG).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, metrics) = get(&format!("{ops}/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(&metrics, "broadcast_jobs_received_total"),
        Some(7.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "broadcast_jobs_delivered_total"),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "broadcast_jobs_dead_lettered_total{reason=\"invalid-json\",code=\"none\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "broadcast_jobs_dead_lettered_total{reason=\"rejected\",code=\"10004\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "broadcast_calls_total{outcome=\"transient\",code=\"10002\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "broadcast_calls_total{outcome=\"permanent\",code=\"10004\"}"
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &metrics,
            "broadcast_calls_total{outcome=\"delivered\",code=\"0\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(sample(&metrics, "broadcast_retries_total{after=\"transient\"}").unwrap() >= 1.0);
    let calls = app.sim.simulator.stats().calls as f64;
    assert_eq!(
        sample(&metrics, "broadcast_call_duration_seconds_count"),
        Some(calls)
    );
    assert!(sample(&metrics, "broadcast_call_bytes_sum").unwrap() > 0.0);
    assert!(sample(&metrics, "broadcast_permit_wait_seconds_count").unwrap() >= 1.0);
    assert_eq!(sample(&metrics, "broadcast_app_active"), Some(1.0));
    assert_eq!(sample(&metrics, "broadcast_broker_connected"), Some(1.0));
    assert_eq!(sample(&metrics, "broadcast_halted"), Some(0.0));
    assert_eq!(sample(&metrics, "broadcast_ledger_down"), Some(0.0));
    assert!(metrics.contains("# HELP broadcast_jobs_delivered_total"));
    signal(&worker, "-TERM");
    wait_exit(&mut worker, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn readiness_flips_during_an_app_wide_fault() {
    let app = spawn_app("readyz", 50.0).await;
    let (mut worker, ops) = worker_with_ops(&app, &[]);
    let ready = |ops: String| async move { get(&format!("{ops}/readyz")).await };
    let deadline = tokio::time::Instant::now() + LONG;
    while ready(ops.clone()).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.sim.simulator.set_faults(FaultPlan {
        always: Some(Fault {
            code: Some(10007),
            ..Fault::default()
        }),
        ..FaultPlan::default()
    });
    app.publish("r-1", &text_job("r-1")).await;
    loop {
        let (status, body) = ready(ops.clone()).await;
        if status == 503 {
            assert!(body.contains("\"halted_by_app_fault\":true"), "{body}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never unready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get(&format!("{ops}/healthz")).await.0,
        200,
        "alive while unready"
    );
    let (_, metrics) = get(&format!("{ops}/metrics")).await;
    assert_eq!(sample(&metrics, "broadcast_halted"), Some(1.0));
    app.sim.simulator.set_faults(FaultPlan::default());
    app.wait_for_elements(1, LONG).await;
    while ready(ops.clone()).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(&worker, "-TERM");
    wait_exit(&mut worker, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn logs_of_failing_calls_carry_no_secret() {
    for format in ["text", "json"] {
        let app = spawn_app("secrets", 50.0).await;
        app.sim.simulator.set_faults(FaultPlan {
            script: vec![
                Fault {
                    code: Some(10002),
                    ..Fault::default()
                },
                Fault {
                    code: Some(70001),
                    ..Fault::default()
                },
                Fault {
                    http_status: Some(502),
                    ..Fault::default()
                },
                Fault {
                    drop: Some(DropPoint::Before),
                    ..Fault::default()
                },
                Fault {
                    garbage: true,
                    ..Fault::default()
                },
                Fault {
                    delay_ms: Some(1500),
                    ..Fault::default()
                },
                Fault {
                    code: Some(70009),
                    ..Fault::default()
                },
            ]
            .into(),
            ..FaultPlan::default()
        });
        let started = broadcast_worker::clock::now_secs();
        let mut command = Command::new(env!("CARGO_BIN_EXE_broadcast-worker"));
        let mut child = command
            .arg("run")
            .env("AMQP_URL", AMQP_URL)
            .env("BROADCAST_QUEUE_PREFIX", &app.prefix)
            .env("TIM_BASE_URL", app.sim.base_url().as_str())
            .env("TIM_SDKAPPID", APP.to_string())
            .env("TIM_IDENTIFIER", ADMIN)
            .env("TIM_SECRET_KEY", KEY)
            .env("BROADCAST_METRICS_ADDR", "127.0.0.1:0")
            .env("BROADCAST_RATE", "50")
            .env("BROADCAST_APP_FAULT_PROBE_SECS", "0.2")
            .env("BROADCAST_BACKOFF_MIN_MS", "20")
            .env("TIM_REQUEST_TIMEOUT_MS", "1000")
            .env("LOG_FORMAT", format)
            .env("RUST_LOG", "trace")
            .env_remove("DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Trace logs are plenty: read them as they come, or the pipe fills up.
        let mut stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut logs = Vec::new();
            std::io::Read::read_to_end(&mut stderr, &mut logs).unwrap();
            logs
        });
        app.publish("s-1", &text_job("s-1")).await;
        app.wait_for_elements(1, LONG).await;
        app.wait_for("every scripted fault", LONG, |app| {
            app.sim.simulator.stats().calls >= 8
        })
        .await;
        signal(&child, "-TERM");
        wait_exit(&mut child, Duration::from_secs(20)).await;
        let ended = broadcast_worker::clock::now_secs();
        let logs = reader.join().unwrap();
        let logs = String::from_utf8_lossy(&logs);
        assert!(
            logs.contains("transient failure"),
            "the failures were logged"
        );
        assert!(!logs.contains(KEY), "the secret key was logged");
        assert!(
            !logs.to_lowercase().contains("usersig="),
            "a request URL was logged"
        );
        // Every UserSig the worker could have signed during the run.
        for time in started.saturating_sub(2)..=ended + 2 {
            let sig = usersig::sign(
                &SecretKey::new(KEY),
                &Claims {
                    identifier: ADMIN.into(),
                    sdkappid: APP,
                    time,
                    expire: 86_400,
                    userbuf: None,
                },
            );
            assert!(
                !logs.contains(sig.expose()),
                "a UserSig was logged ({format})"
            );
        }
        let sig_like = regex_like_usersig(&logs);
        assert!(
            sig_like.is_none(),
            "something shaped like a UserSig was logged: {sig_like:?}"
        );
    }
}

/// Finds a run of 60 or more UserSig-alphabet characters starting with `eJ`
/// (zlib's header in base64), which is what every UserSig looks like.
fn regex_like_usersig(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let in_alphabet = |b: u8| b.is_ascii_alphanumeric() || b == b'*' || b == b'-' || b == b'_';
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == b'e' && bytes[i + 1] == b'J' && (i == 0 || !in_alphabet(bytes[i - 1])) {
            let end = (i..bytes.len())
                .find(|&j| !in_alphabet(bytes[j]))
                .unwrap_or(bytes.len());
            if end - i >= 60 {
                return Some(text[i..end].to_string());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    None
}
