//! Replaying or purging a filter acts on the dead letters the operator
//! confirmed, or on none: when one of them left and another arrived in the
//! meantime (as many, but not the same), the console's pages and its API
//! answer 409 and `dlq replay` / `dlq purge --expect-digest` exit 1, each
//! having done nothing. Against RabbitMQ, the simulator and the binary.

use std::process::{Command, Output};

use reqwest::Client;
use serde_json::json;
use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

/// One invalid-json dead letter leaves (`bad-json-0`) and another arrives
/// (`late-0`): still four match `reason=invalid-json`, not the same four.
async fn swap_one(app: &TestApp, client: &Client, url: &str) {
    let (status, done) = console_api_post(
        client,
        &format!("{url}/api/apps/{APP}/purge"),
        json!({"ids": ["bad-json-0"], "expected": 1}),
    )
    .await;
    assert_eq!((status, &done["done"]), (200, &json!(1)), "{done}");
    add_dead_letter(app, Some("late-0"), "invalid-json", b"{late").await;
    app.wait_for_len(&app.names.dead, 7).await;
}

/// The ids of the dead letters left, sorted.
async fn dead_ids(client: &Client, url: &str) -> Vec<String> {
    let (_, listing) =
        console_api(client, &format!("{url}/api/apps/{APP}/dead?per_page=500")).await;
    let mut ids: Vec<String> = listing["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn post_form(client: &Client, url: &str, fields: &[(String, String)]) -> (u16, String) {
    let response = client
        .post(url)
        .bearer_auth(CONSOLE_TOKEN)
        .form(fields)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The confirmation of purging `reason=invalid-json`, and its form's fields.
async fn confirm_purge(client: &Client, url: &str) -> (String, Vec<(String, String)>) {
    let ask = [("do", "purge-filter"), ("reason", "invalid-json")]
        .map(|(k, v)| (k.to_string(), v.to_string()));
    let (status, page) = post_form(client, &format!("{url}/apps/{APP}/confirm"), &ask).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("data-test=\"confirm-count\">4<"), "{page}");
    let fields = hidden_fields(&page, "confirm-form");
    (page, fields)
}

#[tokio::test]
async fn a_filter_purged_from_the_pages_is_what_was_confirmed_or_nothing() {
    let app = app_with_dead_letters("confirm-page").await;
    let worker = console_worker(BIN, &app, &[("BROADCAST_CONSOLE_TOKEN", CONSOLE_TOKEN)]);
    let (client, url) = (console_client(), worker.url.clone());
    let (_, fields) = confirm_purge(&client, &url).await;
    swap_one(&app, &client, &url).await;

    let (status, page) = post_form(&client, &format!("{url}/apps/{APP}/purge"), &fields).await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("id=\"confirm-changed\""), "{page}");
    assert!(page.contains("not the same"), "{page}");
    app.wait_for_len(&app.names.dead, 7).await;
    assert!(dead_ids(&client, &url)
        .await
        .contains(&"late-0".to_string()));

    // Confirmed again, the new four go, and only they.
    let (_, fields) = confirm_purge(&client, &url).await;
    let response = client
        .post(format!("{url}/apps/{APP}/purge"))
        .bearer_auth(CONSOLE_TOKEN)
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    app.wait_for_len(&app.names.dead, 3).await;
    assert_eq!(
        dead_ids(&client, &url).await,
        ["no-body-0", "rejected-0", "rejected-1"]
    );
    worker.stop().await;
}

#[tokio::test]
async fn the_api_acts_on_the_dry_runs_digest_or_nothing() {
    let app = app_with_dead_letters("confirm-api").await;
    let worker = console_worker(BIN, &app, &[("BROADCAST_CONSOLE_TOKEN", CONSOLE_TOKEN)]);
    let (client, url) = (console_client(), worker.url.clone());
    let purge = format!("{url}/api/apps/{APP}/purge");
    let (_, dry) = console_api_post(
        &client,
        &purge,
        json!({"reason": "invalid-json", "dry_run": true}),
    )
    .await;
    assert_eq!(dry["matching"], 4, "{dry}");
    let digest = dry["digest"]
        .as_str()
        .expect("a dry run gives the digest")
        .to_string();
    // The same dry run gives the same digest: it names the set, not the reading.
    let (_, again) = console_api_post(
        &client,
        &purge,
        json!({"reason": "invalid-json", "dry_run": true}),
    )
    .await;
    assert_eq!(again["digest"], digest.as_str());
    swap_one(&app, &client, &url).await;

    let stale = json!({"reason": "invalid-json", "expected": 4, "digest": digest});
    let (status, refused) = console_api_post(&client, &purge, stale).await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("nothing was done"),
        "{refused}"
    );
    // A filter's count alone no longer confirms it.
    let (status, refused) = console_api_post(
        &client,
        &purge,
        json!({"reason": "invalid-json", "expected": 4}),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("digest"),
        "{refused}"
    );
    app.wait_for_len(&app.names.dead, 7).await;

    let (_, dry) = console_api_post(
        &client,
        &purge,
        json!({"reason": "invalid-json", "dry_run": true}),
    )
    .await;
    let fresh = dry["digest"].as_str().unwrap().to_string();
    assert_ne!(fresh, digest, "another set, another digest");
    let (status, done) = console_api_post(
        &client,
        &purge,
        json!({"reason": "invalid-json", "digest": fresh}),
    )
    .await;
    assert_eq!((status, &done["done"]), (200, &json!(4)), "{done}");
    app.wait_for_len(&app.names.dead, 3).await;
    // Ids alone are still confirmed by their count.
    let (status, done) = console_api_post(
        &client,
        &purge,
        json!({"ids": ["rejected-0"], "expected": 1}),
    )
    .await;
    assert_eq!((status, &done["done"]), (200, &json!(1)), "{done}");
    app.wait_for_len(&app.names.dead, 2).await;
    worker.stop().await;
}

fn dlq(app: &TestApp, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("dlq")
        .args(args)
        .env("AMQP_URL", AMQP_URL)
        .env("BROADCAST_QUEUE_PREFIX", &app.prefix)
        .env_remove("BROADCAST_TEST_CRASH_AT")
        .output()
        .unwrap()
}

fn out(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The digest a dry run prints, after `--expect-digest `.
fn printed_digest(output: &Output) -> String {
    let text = out(output);
    let at = text
        .find("--expect-digest ")
        .unwrap_or_else(|| panic!("no digest printed: {text}"))
        + "--expect-digest ".len();
    text[at..].split_whitespace().next().unwrap().to_string()
}

#[tokio::test]
async fn dlq_replay_and_purge_act_on_the_dry_runs_digest_or_nothing() {
    let app = app_with_dead_letters("confirm-cli").await;
    let asked = dlq(&app, &["purge", "--reason", "invalid-json"]);
    let digest = printed_digest(&asked);
    let dry = dlq(&app, &["replay", "--reason", "invalid-json", "--dry-run"]);
    assert!(dry.status.success(), "{}", out(&dry));
    assert_eq!(
        printed_digest(&dry),
        digest,
        "purge and replay name the same set alike"
    );
    let gone = dlq(&app, &["purge", "--id", "bad-json-0", "--yes"]);
    assert!(gone.status.success(), "{}", out(&gone));
    add_dead_letter(&app, Some("late-0"), "invalid-json", b"{late").await;
    app.wait_for_len(&app.names.dead, 7).await;

    for stale in [
        dlq(
            &app,
            &[
                "purge",
                "--reason",
                "invalid-json",
                "--yes",
                "--expect-digest",
                &digest,
            ],
        ),
        dlq(
            &app,
            &[
                "replay",
                "--reason",
                "invalid-json",
                "--expect-digest",
                &digest,
            ],
        ),
    ] {
        assert_eq!(stale.status.code(), Some(1), "{}", out(&stale));
        assert!(out(&stale).contains("nothing was done"), "{}", out(&stale));
    }
    app.wait_for_len(&app.names.dead, 7).await;
    app.wait_for_len(&app.names.jobs, 0).await;

    let fresh = printed_digest(&dlq(&app, &["purge", "--reason", "invalid-json"]));
    let removed = dlq(
        &app,
        &[
            "purge",
            "--reason",
            "invalid-json",
            "--yes",
            "--expect-digest",
            &fresh,
        ],
    );
    assert!(removed.status.success(), "{}", out(&removed));
    assert!(
        out(&removed).contains("removed 4 job(s)"),
        "{}",
        out(&removed)
    );
    app.wait_for_len(&app.names.dead, 3).await;
    let dry = dlq(&app, &["replay", "--reason", "rejected", "--dry-run"]);
    let replayed = dlq(
        &app,
        &[
            "replay",
            "--reason",
            "rejected",
            "--expect-digest",
            &printed_digest(&dry),
        ],
    );
    assert!(replayed.status.success(), "{}", out(&replayed));
    app.wait_for_len(&app.names.jobs, 2).await;
    // Without --expect-digest, as scripts use it: it acts on what matches.
    let plain = dlq(&app, &["purge", "--all", "--yes"]);
    assert!(plain.status.success(), "{}", out(&plain));
    app.wait_for_len(&app.names.dead, 0).await;
}
