//! The console against a worker process, RabbitMQ and the simulator: off
//! without a token; 401 and nothing else without the right one; a login
//! that opens the pages; actions that need the CSRF token and a
//! confirmation; summaries, filters and pages that match what was
//! dead-lettered; a script in a job shown as text; a replay the simulator
//! delivers; the backlog and a halt as the API reports them; and a token
//! that never shows in the worker's logs.

use std::time::Duration;

use broadcast_worker::simulator::{Fault, FaultPlan};
use reqwest::{Client, Response};
use serde_json::{json, Value};
use testkit::*;

const LONG: Duration = Duration::from_secs(60);
const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

fn with_token() -> [(&'static str, &'static str); 1] {
    [("BROADCAST_CONSOLE_TOKEN", CONSOLE_TOKEN)]
}

async fn text(response: Response) -> (u16, String) {
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn get(client: &Client, url: &str, cookie: Option<&str>) -> (u16, String) {
    let mut request = client.get(url);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    text(request.send().await.unwrap()).await
}

/// The ids of the dead letters of a listing.
fn ids(listing: &Value) -> Vec<String> {
    listing["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

/// The count of a summary row, by reason.
fn count_of(summary: &Value, reason: &str) -> u64 {
    summary
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["reason"] == reason)
        .map(|row| row["count"].as_u64().unwrap())
        .sum()
}

/// Waits until `/metrics` shows `line` (a sample of the test app).
async fn wait_for_metric(client: &Client, url: &str, line: &str) {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let (_, metrics) = get(client, &format!("{url}/metrics"), None).await;
        if metrics.lines().any(|l| l == line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {line:?} in {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_console_is_off_without_a_token_and_the_backlog_is_measured() {
    let app = spawn_app("console-off", 50.0).await;
    // Halted by an app-wide fault, holding one job: the other four wait.
    app.sim.simulator.set_faults(FaultPlan {
        always: Some(Fault {
            code: Some(10007),
            ..Fault::default()
        }),
        ..FaultPlan::default()
    });
    for i in 0..5 {
        app.publish(&format!("b-{i}"), &text_job(&format!("b-{i}")))
            .await;
    }
    let worker = console_worker(BIN, &app, &[("BROADCAST_PREFETCH", "1")]);
    let client = console_client();
    for path in [
        "/",
        "/login",
        "/apps/1400000007",
        "/api/apps",
        "/static/console.css",
    ] {
        let (status, _) = get(&client, &format!("{}{path}", worker.url), None).await;
        assert_eq!(status, 404, "{path} without a console");
    }
    let backlog = format!("broadcast_backlog_jobs{{sdkappid=\"{APP}\"}} 4");
    wait_for_metric(&client, &worker.url, &backlog).await;
    let (_, metrics) = get(&client, &format!("{}/metrics", worker.url), None).await;
    assert!(
        metrics.contains("# HELP broadcast_backlog_jobs"),
        "{metrics}"
    );
    assert_eq!(
        get(&client, &format!("{}/healthz", worker.url), None)
            .await
            .0,
        200
    );
    worker.stop().await;
}

#[tokio::test]
async fn an_unusable_token_stops_the_start_without_quoting_it() {
    let app = spawn_app("console-bad-token", 50.0).await;
    let missing = std::env::temp_dir().join("bw-console-no-such-token-file");
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[("BROADCAST_CONSOLE_TOKEN", "   ")],
            "the console token is empty",
        ),
        (
            &[("BROADCAST_CONSOLE_TOKEN_FILE", missing.to_str().unwrap())],
            "cannot read the console token file",
        ),
        (
            &[
                ("BROADCAST_CONSOLE_TOKEN", "twice-given-token"),
                ("BROADCAST_CONSOLE_TOKEN_FILE", "/dev/null"),
            ],
            "give the console token once",
        ),
    ];
    for (env, says) in cases {
        let output = std::process::Command::new(BIN)
            .arg("run")
            .env("AMQP_URL", AMQP_URL)
            .env("BROADCAST_QUEUE_PREFIX", &app.prefix)
            .env("TIM_SDKAPPID", APP.to_string())
            .env("TIM_IDENTIFIER", ADMIN)
            .env("TIM_SECRET_KEY", KEY)
            .env("BROADCAST_METRICS_ADDR", "127.0.0.1:0")
            .env_remove("BROADCAST_CONSOLE_TOKEN")
            .env_remove("BROADCAST_CONSOLE_TOKEN_FILE")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{env:?} started");
        assert!(stderr.contains(says), "{env:?}: {stderr}");
        assert!(!stderr.contains("twice-given-token"), "{stderr}");
    }
}

#[tokio::test]
async fn without_the_token_only_the_login_form_answers() {
    let app = spawn_app("console-401", 50.0).await;
    let worker = console_worker(BIN, &app, &with_token());
    let (client, url) = (console_client(), worker.url.clone());
    let forged = "bw_console=v1.99999999999.0000";
    for path in ["/", &format!("/apps/{APP}"), &format!("/apps/{APP}/dead")] {
        for cookie in [None, Some(forged)] {
            let response = client
                .get(format!("{url}{path}"))
                .header("cookie", cookie.unwrap_or(""))
                .send()
                .await
                .unwrap();
            let csp = response.headers()["content-security-policy"].clone();
            assert!(csp.to_str().unwrap().starts_with("default-src 'self'"));
            assert_eq!(response.headers()["x-content-type-options"], "nosniff");
            assert_eq!(response.headers()["referrer-policy"], "no-referrer");
            let (status, body) = text(response).await;
            assert_eq!(status, 401, "{path}");
            assert!(body.contains("id=\"login-form\""), "{body}");
            for secret in [
                "data-sdkappid",
                "app-state",
                "dead-table",
                "Quota",
                "Log out",
            ] {
                assert!(!body.contains(secret), "{path} shows {secret}: {body}");
            }
        }
    }
    for bearer in [None, Some("wrong-token")] {
        let mut request = client.get(format!("{url}/api/apps"));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let (status, body) = text(request.send().await.unwrap()).await;
        assert_eq!(status, 401);
        assert!(!body.contains(&APP.to_string()), "{body}");
    }
    let (status, body) = text(
        client
            .post(format!("{url}/login"))
            .form(&[("token", "wrong-token"), ("next", "/")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(body.contains("login-error") && !body.contains("set-cookie"));
    let logs = worker.stop().await;
    assert!(
        logs.contains("a login with a wrong token"),
        "the refusal is logged"
    );
    assert!(!logs.contains(CONSOLE_TOKEN), "the token was logged");
}

#[tokio::test]
async fn a_session_sees_the_counts_and_purges_a_filter_after_confirming() {
    let app = app_with_dead_letters("console-session").await;
    let worker = console_worker(BIN, &app, &with_token());
    let (client, url) = (console_client(), worker.url.clone());
    let response = client
        .post(format!("{url}/login"))
        .form(&[("token", CONSOLE_TOKEN), ("next", "/apps/1400000007")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["location"], "/apps/1400000007");
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    assert!(
        !set_cookie.contains(CONSOLE_TOKEN),
        "the cookie is not the token"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let session = Some(cookie.as_str());

    let (status, apps) = get(&client, &format!("{url}/"), session).await;
    assert_eq!(status, 200, "{apps}");
    assert!(apps.contains(&format!("data-sdkappid=\"{APP}\"")), "{apps}");
    let (status, page) = get(&client, &format!("{url}/apps/{APP}"), session).await;
    assert_eq!(status, 200);
    assert!(page.contains("id=\"app-chart\"") && page.contains("id=\"app-state\""));
    for (reason, n) in DEAD_LETTERS {
        let row = format!("data-reason=\"{reason}\"");
        let at = page
            .find(&row)
            .unwrap_or_else(|| panic!("no {reason} row: {page}"));
        let count = format!("data-test=\"summary-count\">{n}<");
        assert!(page[at..].contains(&count), "{reason}: {n}");
    }

    // Without the CSRF token: refused, and nothing changes.
    let purge = [
        ("scope", "filter"),
        ("reason", "rejected"),
        ("expected", "2"),
    ];
    let (status, _) = text(
        client
            .post(format!("{url}/apps/{APP}/purge"))
            .header("cookie", &cookie)
            .form(&purge)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    let api_purge = client
        .post(format!("{url}/api/apps/{APP}/purge"))
        .header("cookie", &cookie)
        .json(&json!({"reason": "rejected", "expected": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        api_purge.status().as_u16(),
        403,
        "a session's API call needs it too"
    );
    app.wait_for_len(&app.names.dead, 7).await;

    // The confirmation says how many; the purge removes exactly those.
    let (_, list) = get(
        &client,
        &format!("{url}/apps/{APP}/dead?reason=rejected"),
        session,
    )
    .await;
    let csrf = csrf_of(&list);
    let confirm = [
        ("csrf", csrf.as_str()),
        ("do", "purge-filter"),
        ("reason", "rejected"),
        ("back", "reason=rejected"),
    ];
    let (status, page) = text(
        client
            .post(format!("{url}/apps/{APP}/confirm"))
            .header("cookie", &cookie)
            .form(&confirm)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("data-test=\"confirm-count\">2<"), "{page}");
    app.wait_for_len(&app.names.dead, 7).await;
    // What the confirmation's form posts: the selection, the count, the
    // digest of the two, and the CSRF token.
    let purge = hidden_fields(&page, "confirm-form");
    assert!(
        purge.contains(&("csrf".to_string(), csrf.clone())),
        "{purge:?}"
    );
    assert!(
        purge.iter().any(|(k, v)| k == "digest" && v.len() == 64),
        "{purge:?}"
    );
    let response = client
        .post(format!("{url}/apps/{APP}/purge"))
        .header("cookie", &cookie)
        .form(&purge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    let to = response.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(
        to,
        format!("/apps/{APP}/dead?reason=rejected&done=purged&n=2")
    );
    let (_, after) = get(&client, &format!("{url}{to}"), session).await;
    assert!(after.contains("id=\"flash\""), "{after}");
    assert!(after.contains("data-test=\"matching-count\">0<"), "{after}");
    app.wait_for_len(&app.names.dead, 5).await;
    let (_, left) = console_api(&client, &format!("{url}/api/apps/{APP}/dead?per_page=500")).await;
    assert_eq!(left["total"], 5);
    assert_eq!(count_of(&left["summary"], "rejected"), 0);
    assert_eq!(count_of(&left["summary"], "invalid-json"), 4);

    // Logging out needs the CSRF token too, and clears the cookie.
    let logout = client
        .post(format!("{url}/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status().as_u16(), 303);
    assert!(logout.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let logs = worker.stop().await;
    assert!(
        logs.contains("console: dead letters purged"),
        "the action is logged"
    );
    assert!(!logs.contains(CONSOLE_TOKEN), "the token was logged");
}

#[tokio::test]
async fn the_api_filters_pages_and_shows_a_script_as_text() {
    let app = app_with_dead_letters("console-api").await;
    let worker = console_worker(BIN, &app, &with_token());
    let (client, url) = (console_client(), worker.url.clone());
    let base = format!("{url}/api/apps/{APP}");
    let (status, summary) = console_api(&client, &format!("{base}/dead/summary")).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["total"], 7);
    for (reason, n) in DEAD_LETTERS {
        assert_eq!(count_of(&summary["summary"], reason), n as u64, "{summary}");
    }
    let (_, first) = console_api(
        &client,
        &format!("{base}/dead?reason=invalid-json&per_page=3"),
    )
    .await;
    assert_eq!(
        (first["matching"].clone(), first["pages"].clone()),
        (json!(4), json!(2))
    );
    let (_, second) = console_api(
        &client,
        &format!("{base}/dead?reason=invalid-json&per_page=3&page=2"),
    )
    .await;
    let mut seen = ids(&first);
    seen.extend(ids(&second));
    seen.sort();
    assert_eq!(seen, ["bad-json-0", "bad-json-1", "bad-json-2", "script-0"]);
    let (_, by_code) = console_api(&client, &format!("{base}/dead?code=10004&newer_than=1h")).await;
    assert_eq!(ids(&by_code).len(), 2);
    let (_, old) = console_api(&client, &format!("{base}/dead?older_than=1h")).await;
    assert_eq!(old["matching"], 0);
    for (query, status) in [
        ("?page=3&reason=invalid-json&per_page=3", 404),
        ("?code=abc", 400),
        ("?older_than=soon", 400),
        ("?colour=red", 400),
        ("?per_page=0", 400),
    ] {
        let (got, body) = console_api(&client, &format!("{base}/dead{query}")).await;
        assert_eq!(got, status, "{query}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    assert_eq!(
        console_api(&client, &format!("{url}/api/apps/abc")).await.0,
        400
    );
    assert_eq!(
        console_api(&client, &format!("{url}/api/apps/1")).await.0,
        404
    );
    assert_eq!(
        console_api(&client, &format!("{base}/dead/nope")).await.0,
        404
    );

    let (status, job) = console_api(&client, &format!("{base}/dead/script-0")).await;
    assert_eq!(status, 200);
    assert_eq!(job["body_text"], SCRIPT_BODY);
    assert_eq!(job["why"]["reason"], "invalid-json");
    assert_eq!(job["ledger"]["state"], "no-ledger");
    let job_page = format!("{url}/apps/{APP}/dead/script-0");
    assert_eq!(
        get(&client, &job_page, None).await.0,
        401,
        "pages need the token too"
    );
    let request = client.get(&job_page).bearer_auth(CONSOLE_TOKEN);
    let (status, page) = text(request.send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(!page.contains(SCRIPT_BODY), "the script is escaped");
    app.wait_for_len(&app.names.dead, 7).await;
    let logs = worker.stop().await;
    assert!(!logs.contains(CONSOLE_TOKEN), "the token was logged");
}

#[tokio::test]
async fn a_replay_through_the_api_is_delivered_and_leaves_the_dead_letters() {
    let app = app_with_dead_letters("console-replay").await;
    accept_everything(&app);
    let worker = console_worker(BIN, &app, &with_token());
    let (client, url) = (console_client(), worker.url.clone());
    let base = format!("{url}/api/apps/{APP}");
    let one = json!({"ids": ["rejected-0"], "dry_run": true});
    let (status, dry) = console_api_post(&client, &format!("{base}/replay"), one).await;
    assert_eq!((status, dry["matching"].clone()), (200, json!(1)), "{dry}");
    let (status, refused) = console_api_post(
        &client,
        &format!("{base}/replay"),
        json!({"ids": ["rejected-0"]}),
    )
    .await;
    assert_eq!(status, 400, "no confirmation: {refused}");
    let (status, wrong) = console_api_post(
        &client,
        &format!("{base}/replay"),
        json!({"ids": ["rejected-0"], "expected": 2}),
    )
    .await;
    assert_eq!(status, 409, "{wrong}");
    app.wait_for_len(&app.names.dead, 7).await;
    let (status, done) = console_api_post(
        &client,
        &format!("{base}/replay"),
        json!({"ids": ["rejected-0"], "expected": 1}),
    )
    .await;
    assert_eq!((status, done["done"].clone()), (200, json!(1)), "{done}");
    app.wait_for("the replayed job's delivery", LONG, |app| {
        app.delivered_texts().contains_key("job:POISON-0")
    })
    .await;
    app.wait_for_len(&app.names.dead, 6).await;
    let (_, left) = console_api(&client, &format!("{base}/dead?reason=rejected")).await;
    assert_eq!(ids(&left), ["rejected-1"]);
    let (_, apps) = console_api(&client, &format!("{url}/api/apps")).await;
    let view = &apps["apps"][0];
    assert_eq!(
        (view["sdkappid"].clone(), view["state"].clone()),
        (json!(APP), json!("active"))
    );
    assert!(view["calls_last_minute"].as_u64().unwrap() >= 1, "{view}");
    let logs = worker.stop().await;
    assert!(logs.contains("console: dead letters replayed"), "{logs}");
    assert!(!logs.contains(CONSOLE_TOKEN), "the token was logged");
}

#[tokio::test]
async fn a_halted_app_shows_its_last_error_in_a_fleet() {
    let fleet = TestFleet::spawn("console-fleet", 2, 50.0, |_, _| {}).await;
    fleet.apps[1].sim.simulator.set_faults(FaultPlan {
        always: Some(Fault {
            code: Some(10007),
            ..Fault::default()
        }),
        ..FaultPlan::default()
    });
    fleet.write_apps_file(&[0, 1], "");
    let port = free_port();
    let mut replica = fleet.replica(
        BIN,
        port,
        &[("BROADCAST_CONSOLE_TOKEN", CONSOLE_TOKEN.into())],
    );
    fleet.apps[1].publish("h-1", &text_job("h-1")).await;
    let client = console_client();
    let url = format!("http://127.0.0.1:{port}");
    let halted = fleet_sdkappid(1);
    let deadline = tokio::time::Instant::now() + LONG;
    let view = loop {
        if let Ok(response) = client
            .get(format!("{url}/api/apps/{halted}"))
            .bearer_auth(CONSOLE_TOKEN)
            .send()
            .await
        {
            let view: Value = response.json().await.unwrap_or_default();
            if view["halted"] == true {
                break view;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "never halted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(view["last_failure"]["code"], 10007, "{view}");
    assert_eq!(view["history"].as_array().map(Vec::len), Some(60));
    let (_, apps) = console_api(&client, &format!("{url}/api/apps")).await;
    let served: Vec<u64> = apps["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["sdkappid"].as_u64().unwrap())
        .collect();
    assert_eq!(served, [fleet_sdkappid(0), halted]);
    let (status, page) = text(
        client
            .get(format!("{url}/apps/{halted}"))
            .bearer_auth(CONSOLE_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        page.contains("id=\"app-halted\"") && page.contains("ErrorCode 10007"),
        "{page}"
    );
    signal(&replica, "-TERM");
    wait_exit(&mut replica, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn a_job_page_says_what_the_ledger_knows() {
    let db = TestDatabase::create("console-ledger").await;
    let ledger = broadcast_worker::ledger::Ledger::connect_lazy(&db.url()).unwrap();
    ledger.migrate().await.unwrap();
    let mut app = spawn_app("console-ledger", 100.0).await;
    app.config.ledger = Some(ledger);
    app.sim
        .simulator
        .set_faults(refuse_bodies_containing("POISON", 10004));
    app.publish("refused/1 ?#", &text_job("POISON-x")).await;
    app.start_worker();
    app.wait_for_dead(1, LONG).await;
    app.stop_worker().await.unwrap();
    let url = db.url();
    let worker = console_worker(
        BIN,
        &app,
        &[
            ("BROADCAST_CONSOLE_TOKEN", CONSOLE_TOKEN),
            ("DATABASE_URL", &url),
        ],
    );
    let client = console_client();
    let cookie = console_login(&client, &worker.url, CONSOLE_TOKEN).await;
    // The id, odd as it is, is the query of the link the table gives.
    let (_, list) = get(
        &client,
        &format!("{}/apps/{APP}/dead", worker.url),
        Some(&cookie),
    )
    .await;
    let href = format!("href=\"/apps/{APP}/dead-letter?id=refused%2F1+%3F%23\"");
    assert!(list.contains(&href), "{list}");
    // The link, and the path segment older links used.
    for link in [
        format!(
            "{}/apps/{APP}/dead-letter?id=refused%2F1+%3F%23",
            worker.url
        ),
        format!("{}/apps/{APP}/dead/refused%2F1%20%3F%23", worker.url),
    ] {
        let (status, page) = get(&client, &link, Some(&cookie)).await;
        assert_eq!(status, 200, "{page}");
        assert!(page.contains("data-state=\"known\""), "{page}");
        assert!(page.contains("dead-lettered at"), "{page}");
    }
    let (_, job) = console_api(
        &client,
        &format!("{}/api/apps/{APP}/dead/refused%2F1%20%3F%23", worker.url),
    )
    .await;
    assert_eq!(job["ledger"]["report"]["reason"], "rejected", "{job}");
    let logs = worker.stop().await;
    assert!(!logs.contains(CONSOLE_TOKEN), "the token was logged");
}

#[tokio::test]
async fn a_fleet_apps_console_shows_and_purges_its_own_dead_letters_of_the_shared_queue() {
    let fleet = TestFleet::spawn("console-shared-dead", 2, 50.0, |_, _| {}).await;
    fleet.write_apps_file(&[0, 1], "");
    let port = free_port();
    let mut replica = fleet.replica(
        BIN,
        port,
        &[("BROADCAST_CONSOLE_TOKEN", CONSOLE_TOKEN.into())],
    );
    let (a, b) = (&fleet.apps[0], &fleet.apps[1]);
    for i in 0..2 {
        a.publish_raw(Some(&format!("a-bad-{i}")), b"{oops", None)
            .await;
    }
    for i in 0..3 {
        b.publish_raw(Some(&format!("b-bad-{i}")), b"{oops", None)
            .await;
    }
    assert_eq!(a.names.dead, b.names.dead, "one dead-letter queue");
    a.wait_for_len(&a.names.dead, 5).await;
    let client = console_client();
    let url = format!("http://127.0.0.1:{port}");
    let (app_a, app_b) = (fleet_sdkappid(0), fleet_sdkappid(1));
    let (status, listed) = console_api(&client, &format!("{url}/api/apps/{app_a}/dead")).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(sorted(ids(&listed)), ["a-bad-0", "a-bad-1"]);
    assert_eq!(
        (listed["total"].clone(), listed["shared"].clone()),
        (json!(2), json!(true))
    );
    let (_, listed) = console_api(&client, &format!("{url}/api/apps/{app_b}/dead")).await;
    assert_eq!(sorted(ids(&listed)), ["b-bad-0", "b-bad-1", "b-bad-2"]);
    let (status, _) = console_api(&client, &format!("{url}/api/apps/{app_b}/dead/a-bad-0")).await;
    assert_eq!(status, 404, "A's dead letter is not B's");

    // Purging all of A's, confirmed by their digest, leaves B's.
    let purge = format!("{url}/api/apps/{app_a}/purge");
    let (_, dry) = console_api_post(&client, &purge, json!({"all": true, "dry_run": true})).await;
    assert_eq!(dry["matching"], 2, "{dry}");
    a.wait_for_len(&a.names.dead, 5).await;
    let (status, done) = console_api_post(
        &client,
        &purge,
        json!({"all": true, "digest": dry["digest"].clone()}),
    )
    .await;
    assert_eq!((status, done["done"].clone()), (200, json!(2)), "{done}");
    a.wait_for_len(&a.names.dead, 3).await;
    let (_, listed) = console_api(&client, &format!("{url}/api/apps/{app_b}/dead")).await;
    assert_eq!(sorted(ids(&listed)), ["b-bad-0", "b-bad-1", "b-bad-2"]);
    signal(&replica, "-TERM");
    wait_exit(&mut replica, Duration::from_secs(20)).await;
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}
