//! The console's read limit against a worker process, RabbitMQ and the
//! simulator: with `BROADCAST_CONSOLE_READ_LIMIT=3` and 7 dead letters, the
//! summary, the list and a job's page read only the first 3 and say so,
//! while a confirmation and an action still count and act on every match in
//! the queue; a limit of 0 stops the start.

use reqwest::Client;
use serde_json::{json, Value};
use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

async fn page(client: &Client, url: &str) -> (u16, String) {
    let response = client
        .get(url)
        .bearer_auth(CONSOLE_TOKEN)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Every count of a summary, added up.
fn summed(summary: &Value) -> u64 {
    let rows = summary.as_array().unwrap();
    rows.iter().map(|row| row["count"].as_u64().unwrap()).sum()
}

/// The ids of the dead letters of a listing.
fn ids(listing: &Value) -> Vec<String> {
    let jobs = listing["jobs"].as_array().unwrap();
    jobs.iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn views_read_at_most_the_limit_and_actions_the_whole_queue() {
    let app = app_with_dead_letters("console-limit").await;
    let limit = [
        ("BROADCAST_CONSOLE_TOKEN", CONSOLE_TOKEN),
        ("BROADCAST_CONSOLE_READ_LIMIT", "3"),
    ];
    let worker = console_worker(BIN, &app, &limit);
    let (client, url) = (console_client(), worker.url.clone());
    let base = format!("{url}/api/apps/{APP}");

    // The views read 3 of the 7, and say so.
    let (status, summary) = console_api(&client, &format!("{base}/dead/summary")).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(
        (&summary["read"], &summary["limited"], &summary["total"]),
        (&json!(3), &json!(true), &json!(7)),
        "{summary}"
    );
    assert_eq!(summed(&summary["summary"]), 3, "{summary}");
    let (_, listing) = console_api(&client, &format!("{base}/dead?per_page=500")).await;
    assert_eq!(
        (&listing["read"], &listing["limited"]),
        (&json!(3), &json!(true))
    );
    assert_eq!(listing["matching"], 3, "{listing}");
    let read = ids(&listing);
    assert_eq!(read.len(), 3, "{listing}");
    let (_, app_page) = page(&client, &format!("{url}/apps/{APP}")).await;
    assert!(app_page.contains("id=\"read-limited\""), "{app_page}");
    assert!(
        app_page.contains("cover the first 3 of 7 dead letters (the oldest)"),
        "{app_page}"
    );
    let (_, list) = page(
        &client,
        &format!("{url}/apps/{APP}/dead?reason=invalid-json"),
    )
    .await;
    assert!(list.contains("id=\"read-limited\""), "{list}");
    assert!(list.contains("Purge every matching"), "{list}");

    // A job past the first 3 is not looked for; one among them is found.
    let all = [
        "bad-json-0",
        "bad-json-1",
        "bad-json-2",
        "script-0",
        "no-body-0",
        "rejected-0",
        "rejected-1",
    ];
    let unread = all
        .iter()
        .find(|id| !read.contains(&id.to_string()))
        .unwrap();
    let (status, missing) = console_api(&client, &format!("{base}/dead/{unread}")).await;
    assert_eq!(status, 404, "{missing}");
    let error = missing["error"].as_str().unwrap();
    assert!(error.contains("among the first 3 of the 7"), "{error}");
    assert!(error.contains("dlq show"), "{error}");
    let (status, job_page) = page(&client, &format!("{url}/apps/{APP}/dead/{unread}")).await;
    assert_eq!(status, 404);
    assert!(job_page.contains("among the first 3"), "{job_page}");
    assert_eq!(
        console_api(&client, &format!("{base}/dead/{}", read[0]))
            .await
            .0,
        200
    );

    // The confirmation counts every match of the queue: the 4 invalid-json.
    let confirm = [("do", "purge-filter"), ("reason", "invalid-json")];
    let request = client.post(format!("{url}/apps/{APP}/confirm"));
    let response = request.bearer_auth(CONSOLE_TOKEN).form(&confirm).send();
    let confirmed = response.await.unwrap().text().await.unwrap();
    assert!(
        confirmed.contains("data-test=\"confirm-count\">4<"),
        "{confirmed}"
    );
    assert!(
        confirmed.contains("id=\"confirm-whole-queue\""),
        "{confirmed}"
    );
    assert!(confirmed.contains("data-total=\"7\""), "{confirmed}");
    let (_, dry) = console_api_post(
        &client,
        &format!("{base}/purge"),
        json!({"reason": "invalid-json", "dry_run": true}),
    )
    .await;
    assert_eq!(
        (&dry["matching"], &dry["total"]),
        (&json!(4), &json!(7)),
        "{dry}"
    );
    app.wait_for_len(&app.names.dead, 7).await;
    // Confirmed by the dry run's digest of the four, read over the whole queue.
    let purge = json!({"reason": "invalid-json", "digest": dry["digest"]});
    let (status, done) = console_api_post(&client, &format!("{base}/purge"), purge).await;
    assert_eq!((status, &done["done"]), (200, &json!(4)), "{done}");
    app.wait_for_len(&app.names.dead, 3).await;

    // 3 left: read whole, and no note.
    let (_, summary) = console_api(&client, &format!("{base}/dead/summary")).await;
    assert_eq!(
        (&summary["read"], &summary["limited"], &summary["total"]),
        (&json!(3), &json!(false), &json!(3)),
        "{summary}"
    );
    let (_, app_page) = page(&client, &format!("{url}/apps/{APP}")).await;
    assert!(!app_page.contains("read-limited"), "{app_page}");
    worker.stop().await;
}

#[tokio::test]
async fn a_read_limit_of_zero_stops_the_start() {
    let app = spawn_app("console-limit-zero", 50.0).await;
    let output = std::process::Command::new(BIN)
        .arg("run")
        .env("AMQP_URL", AMQP_URL)
        .env("BROADCAST_QUEUE_PREFIX", &app.prefix)
        .env("TIM_SDKAPPID", APP.to_string())
        .env("TIM_IDENTIFIER", ADMIN)
        .env("TIM_SECRET_KEY", KEY)
        .env("BROADCAST_METRICS_ADDR", "127.0.0.1:0")
        .env("BROADCAST_CONSOLE_TOKEN", CONSOLE_TOKEN)
        .env("BROADCAST_CONSOLE_READ_LIMIT", "0")
        .env_remove("BROADCAST_CONSOLE_TOKEN_FILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started: {stderr}");
    assert!(
        stderr.contains("BROADCAST_CONSOLE_READ_LIMIT must be at least 1"),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).is_empty(),
        "no ops endpoint"
    );
}
