//! The producers' HTTP endpoint (`broadcast-worker ingest`) against real
//! RabbitMQ and PostgreSQL: a job is published only when valid and answered
//! 202 once confirmed; one clear 400 (or 413) per mistake and nothing
//! published; idempotency keys answered as first posted; bearer tokens per
//! app with a request limit; the urgent lane; batches; a job's record; the
//! OpenAPI document and every example in it; 503 with Retry-After when the
//! broker is out of reach or blocks publishers.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");
const TOKEN: &str = "token-for-the-test-app-0001";
const OTHER_APP_TOKEN: &str = "token-for-another-app-0002";

/// An ingest process for `app`'s queues, its tokens file, its port.
struct Endpoint {
    child: Child,
    base: String,
    dir: PathBuf,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn endpoint(app: &TestApp, amqp_url: &str, extra: &[(&str, String)]) -> Endpoint {
    let dir = std::env::temp_dir().join(format!("{}-ingest", app.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("{APP} {TOKEN}\n1 {OTHER_APP_TOKEN}\n")).unwrap();
    let port = free_port();
    let mut command = std::process::Command::new(BIN);
    command
        .arg("ingest")
        .env("AMQP_URL", amqp_url)
        .env("BROADCAST_QUEUE_PREFIX", &app.prefix)
        .env("TIM_SDKAPPID", APP.to_string())
        .env("BROADCAST_INGEST_ADDR", format!("127.0.0.1:{port}"))
        .env("BROADCAST_INGEST_TOKENS_FILE", &tokens)
        .env_remove("BROADCAST_APPS_FILE")
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (key, value) in extra {
        command.env(key, value);
    }
    let child = command.spawn().expect("the binary starts");
    let base = format!("http://127.0.0.1:{port}");
    let endpoint = Endpoint { child, base, dir };
    for _ in 0..100 {
        if reqwest::get(format!("{}/healthz", endpoint.base))
            .await
            .is_ok()
        {
            return endpoint;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the ingest endpoint did not come up on {}", endpoint.base);
}

fn job(text: &str) -> Value {
    json!({"MsgBody": [{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}]})
}

async fn post(base: &str, headers: &[(&str, &str)], body: impl Into<reqwest::Body>) -> Response {
    let mut request = Client::new()
        .post(format!("{base}/v1/apps/{APP}/broadcasts"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

async fn error_of(response: Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error"]
            .as_str()
            .expect("an error message")
            .to_string(),
    )
}

#[tokio::test]
async fn valid_jobs_are_published_once_confirmed_and_each_mistake_is_refused_alone() {
    let db = TestDatabase::create("ingest").await;
    let app = spawn_app("ingest", 5.0).await;
    let ep = endpoint(&app, AMQP_URL, &[("DATABASE_URL", db.url())]).await;
    let base = &ep.base;

    // One job, with its key, deadline and latest-wins key.
    let response = post(
        base,
        &[
            ("Idempotency-Key", "order-1"),
            ("X-Deadline", "60s"),
            ("X-Coalesce-Key", "score"),
        ],
        job("one").to_string(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["id"], "order-1");
    assert_eq!(accepted["queue"], app.names.jobs.as_str());
    let waiting = app.peek_jobs().await;
    assert_eq!(waiting.len(), 1);
    let message = &waiting[0];
    assert_eq!(
        message.properties.message_id().as_ref().unwrap().as_str(),
        "order-1"
    );
    let headers = message.properties.headers().clone().unwrap();
    assert!(
        headers.inner().contains_key("x-deadline")
            && headers.inner().contains_key("x-coalesce-key")
    );
    assert_eq!(message.data, job("one").to_string().as_bytes());

    // The same key again: the first answer, nothing published; another body: 422.
    let same = [
        ("Idempotency-Key", "order-1"),
        ("X-Deadline", "90s"),
        ("X-Coalesce-Key", "score"),
    ];
    let again = post(base, &same, job("one").to_string()).await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let reused = post(base, &same, job("two").to_string()).await;
    assert_eq!(error_of(reused).await.0, StatusCode::UNPROCESSABLE_ENTITY);

    // Mistakes: one 400 each, nothing published.
    let two_customs = json!({"MsgBody": [
        {"MsgType": "TIMCustomElem", "MsgContent": {"Data": "a"}},
        {"MsgType": "TIMCustomElem", "MsgContent": {"Data": "b"}}]});
    for (headers, body, says) in [
        (vec![], "not json".to_string(), "JSON"),
        (vec![], two_customs.to_string(), "TIMCustomElem"),
        (vec![], json!({"MsgBody": [], "Extra": 1}).to_string(), ""),
        (
            vec![("X-Deadline", "soon")],
            job("x").to_string(),
            "X-Deadline",
        ),
        (
            vec![("X-Urgent", "maybe")],
            job("x").to_string(),
            "X-Urgent",
        ),
        (
            vec![("X-Coalesce-Key", "k")],
            job("x").to_string(),
            "Idempotency-Key",
        ),
        (
            vec![("Idempotency-Key", "")],
            job("x").to_string(),
            "Idempotency-Key",
        ),
    ] {
        let (status, error) = error_of(post(base, &headers, body.clone()).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert!(error.contains(says), "{body}: {error}");
    }
    let big = job(&"x".repeat(13_000)).to_string();
    assert_eq!(
        post(base, &[], big).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let huge = format!("{}{}", " ".repeat(70_000), job("x"));
    let (status, error) = error_of(post(base, &[], huge).await).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error.contains("over 65536 bytes"), "{error}");
    assert_eq!(app.peek_jobs().await.len(), 1, "nothing more published");

    // Tokens: none, not ours, another app's.
    let anonymous = Client::new()
        .post(format!("{base}/v1/apps/{APP}/broadcasts"))
        .body(job("x").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    let forbidden = Client::new()
        .post(format!("{base}/v1/apps/{APP}/broadcasts"))
        .bearer_auth(OTHER_APP_TOKEN)
        .body(job("x").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    let unknown = Client::new()
        .post(format!("{base}/v1/apps/1/broadcasts"))
        .bearer_auth(OTHER_APP_TOKEN)
        .body(job("x").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    // The urgent lane.
    let urgent = post(base, &[("X-Urgent", "true")], job("now").to_string()).await;
    assert_eq!(urgent.status(), StatusCode::ACCEPTED);
    assert_eq!(app.queue_len(&app.names.urgent).await, 1);

    // A batch: one result per job, the bad one alone refused.
    let batch = json!({"jobs": [
        {"job": job("b1"), "idempotency_key": "b-1"},
        {"job": {"MsgBody": "no"}},
        {"job": job("b3"), "deadline_ms": 4_102_444_800_000u64},
    ]});
    let answered: Value = Client::new()
        .post(format!("{base}/v1/apps/{APP}/broadcasts:batch"))
        .bearer_auth(TOKEN)
        .json(&batch)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statuses: Vec<u64> = answered["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [202, 400, 202], "{answered}");
    assert_eq!(answered["results"][0]["id"], "b-1");
    assert_eq!(app.peek_jobs().await.len(), 3);

    // What became of a job, once a worker sent it.
    let mut worker = worker_process(BIN, &app, &[("DATABASE_URL", db.url())]);
    app.wait_for(
        "the posted jobs delivered",
        Duration::from_secs(60),
        |app| {
            let texts = app.delivered_texts();
            ["one", "now", "b1", "b3"]
                .iter()
                .all(|t| texts.contains_key(*t))
        },
    )
    .await;
    let record: Value = Client::new()
        .get(format!("{base}/v1/apps/{APP}/broadcasts/b-1"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(record["state"], "delivered", "{record}");
    assert!(record["msg_seq"].as_i64().is_some());
    let missing = Client::new()
        .get(format!("{base}/v1/apps/{APP}/broadcasts/nope"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    signal(&worker, "-TERM");
    wait_exit(&mut worker, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn every_documented_example_is_accepted_as_documented() {
    let app = spawn_app("ingest-examples", 5.0).await;
    let ep = endpoint(&app, AMQP_URL, &[]).await;
    let served: Value = reqwest::get(format!("{}/v1/openapi.json", ep.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kept: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/ingest.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        served, kept,
        "the endpoint serves the document kept in the repository"
    );
    assert_eq!(served["openapi"], "3.1.0");
    let schema: Value = reqwest::get(format!("{}/v1/job.schema.json", ep.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kept_schema: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schema/job.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(schema, kept_schema, "the endpoint publishes the job schema");
    let mut tried = 0;
    for (path, expected) in [
        ("/v1/apps/{sdkappid}/broadcasts", 202),
        ("/v1/apps/{sdkappid}/broadcasts:batch", 200),
    ] {
        let examples = served["paths"][path]["post"]["requestBody"]["content"]["application/json"]
            ["examples"]
            .as_object()
            .expect("documented examples");
        for (name, example) in examples {
            let url = format!(
                "{}{}",
                ep.base,
                path.replace("{sdkappid}", &APP.to_string())
            );
            let response = Client::new()
                .post(url)
                .bearer_auth(TOKEN)
                .json(&example["value"])
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status().as_u16(),
                expected,
                "example {name} of {path}"
            );
            if expected == 200 {
                let body: Value = response.json().await.unwrap();
                assert!(
                    body["results"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|r| r["status"] == 202),
                    "example {name}: {body}"
                );
            }
            tried += 1;
        }
    }
    assert!(tried >= 3);
    // Without a ledger a job's record cannot be known.
    let record = Client::new()
        .get(format!("{}/v1/apps/{APP}/broadcasts/x", ep.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(record.status(), StatusCode::NOT_IMPLEMENTED);
}

#[tokio::test]
async fn a_token_over_its_limit_and_a_broker_out_of_reach_are_told_when_to_retry() {
    let app = spawn_app("ingest-limits", 5.0).await;
    let limited = endpoint(
        &app,
        AMQP_URL,
        &[("BROADCAST_INGEST_REQUESTS_PER_SECOND", "1".into())],
    )
    .await;
    let mut statuses = Vec::new();
    for i in 0..4 {
        let response = post(&limited.base, &[], job(&format!("l{i}")).to_string()).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(
                response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    >= 1
            );
        }
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses[..2], [202, 202], "a burst of two");
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    // No broker where it is told to publish: 503, Retry-After, nothing hangs.
    let closed = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
    let down = endpoint(&app, &closed, &[]).await;
    let response = post(&down.base, &[], job("x").to_string()).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "5");
    let ready = reqwest::get(format!("{}/readyz", down.base)).await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// The job schema as the OpenAPI document embeds it (see `openapi/generate.py`).
fn as_component(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| *k != "$schema" && *k != "$id")
                .map(|(k, v)| match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => (
                        k.clone(),
                        Value::String(r.replace("#/$defs/", "#/components/schemas/Job/$defs/")),
                    ),
                    _ => (k.clone(), as_component(v)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(as_component).collect()),
        other => other.clone(),
    }
}

#[test]
fn the_documents_job_schema_is_the_repositorys() {
    let read = |path: &str| -> Value {
        let path = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    };
    let openapi = read("openapi/ingest.json");
    let job = read("schema/job.schema.json");
    assert_eq!(
        openapi["components"]["schemas"]["Job"],
        as_component(&job),
        "openapi/ingest.json is out of date: run python3 openapi/generate.py"
    );
}

#[tokio::test]
async fn a_broker_that_blocks_publishers_gets_503_until_it_takes_them_again() {
    let cluster = Cluster::start(1);
    let app = spawn_app("ingest-blocked", 5.0).await;
    let ep = endpoint(&app, &cluster.url(0), &[]).await;
    let accepted = post(&ep.base, &[], job("before").to_string()).await;
    assert_eq!(
        accepted.status(),
        StatusCode::ACCEPTED,
        "published on the private node"
    );
    // A memory alarm: the node blocks every publishing connection.
    cluster.ctl(0, &["set_vm_memory_high_watermark", "0.000001"]);
    let mut refused = None;
    for _ in 0..100 {
        let response = post(&ep.base, &[], job("during").to_string()).await;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let refused = refused.expect("503 while the broker blocks publishers");
    assert_eq!(refused.headers()["retry-after"], "5");
    let (_, error) = error_of(refused).await;
    assert!(error.contains("blocks publishers"), "{error}");
    cluster.ctl(0, &["set_vm_memory_high_watermark", "0.4"]);
    let mut taken = false;
    for _ in 0..100 {
        if post(&ep.base, &[], job("after").to_string()).await.status() == StatusCode::ACCEPTED {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(taken, "202 again once the alarm is lifted");
}
