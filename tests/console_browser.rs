//! The console in a real browser: headless Chromium (Debian's `chromium`,
//! through `chromedriver`) against a worker process whose dead-letter queue
//! holds dead letters of three reasons, while it delivers a backlog. Logs in,
//! reads the counts, filters, opens a job holding a script, replays one job
//! (delivered by the simulator, gone from the table) and purges a filter after
//! confirming. Screenshots of the main pages are saved in
//! `target/console-screenshots/`.

use std::time::Duration;

use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

/// Types into the field `css` selects.
async fn type_into(browser: &Browser, css: &str, text: &str) {
    let field = browser.client.find(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

/// Filters the dead letters by `reason` and waits for the page that says
/// `matching` of them match (the page before holds the same count element).
async fn filter_by_reason(browser: &Browser, reason: &str, matching: &str) {
    let select = browser
        .client
        .find(Locator::Css("#filter-reason"))
        .await
        .unwrap();
    select.select_by_value(reason).await.unwrap();
    browser.click("#filter-submit").await;
    browser
        .wait_for_text("[data-test=matching-count]", matching)
        .await;
}

/// Ids of the rows the dead-letter table shows.
async fn table_ids(browser: &Browser) -> Vec<String> {
    let mut ids = Vec::new();
    for row in browser
        .client
        .find_all(Locator::Css("tr[data-test=dead-row]"))
        .await
        .unwrap()
    {
        ids.push(row.attr("data-job-id").await.unwrap().unwrap_or_default());
    }
    ids.sort();
    ids
}

/// The summary's count for one reason (and code) on the app's page.
async fn summary_count(browser: &Browser, reason: &str) -> u32 {
    let css =
        format!("tr[data-test=summary-row][data-reason=\"{reason}\"] [data-test=summary-count]");
    browser.text(&css).await.trim().parse().unwrap()
}

#[tokio::test]
async fn an_operator_logs_in_filters_replays_one_job_and_purges_a_filter() {
    let app = app_with_dead_letters("browser").await;
    let worker = console_worker(BIN, &app, &[("BROADCAST_CONSOLE_TOKEN", CONSOLE_TOKEN)]);
    // A backlog flowing while the operator looks: the chart and the quota share.
    let jobs = backlog("flow", 300);
    app.publish_many(&jobs).await;
    let browser = Browser::start().await;
    let url = worker.url.clone();

    // A wrong token is refused, with nothing shown but the form.
    browser.client.goto(&format!("{url}/")).await.unwrap();
    browser.text("#login-form").await;
    browser.screenshot("1-login").await;
    type_into(&browser, "#token", "not-the-token").await;
    browser.click("#login-submit").await;
    assert!(!browser.text("#login-error").await.is_empty());
    assert!(
        browser
            .client
            .find(Locator::Css("[data-test=app-row]"))
            .await
            .is_err(),
        "no app is shown without the token"
    );
    type_into(&browser, "#token", CONSOLE_TOKEN).await;
    browser.click("#login-submit").await;

    // The apps page counts the seven dead letters.
    let row = format!("tr[data-test=app-row][data-sdkappid=\"{APP}\"]");
    assert_eq!(
        browser
            .text(&format!("{row} [data-test=app-dead-count]"))
            .await
            .trim(),
        "7"
    );
    app.wait_for("the backlog delivered", Duration::from_secs(60), |app| {
        app.all_delivered(&jobs)
    })
    .await;
    browser.screenshot("2-apps").await;

    // The app's page: the summary by reason, and the chart of the flow.
    browser
        .client
        .goto(&format!("{url}/apps/{APP}"))
        .await
        .unwrap();
    for (reason, count) in DEAD_LETTERS {
        assert_eq!(
            summary_count(&browser, reason).await as usize,
            count,
            "{reason}"
        );
    }
    browser.text("#app-chart").await;
    browser.screenshot("3-app").await;

    // Filter: invalid-json holds the four, the script among them.
    browser.click("#dead-link").await;
    filter_by_reason(&browser, "invalid-json", "4").await;
    assert_eq!(
        table_ids(&browser).await,
        ["bad-json-0", "bad-json-1", "bad-json-2", "script-0"]
    );
    browser.screenshot("4-dead-filtered").await;

    // The job holding a script: shown as text, never run.
    browser
        .click("tr[data-job-id=\"script-0\"] [data-test=job-link]")
        .await;
    assert!(browser.text("#job-body").await.contains(SCRIPT_BODY));
    assert!(
        browser.client.get_alert_text().await.is_err(),
        "the body's script did not run"
    );
    assert!(browser.text("#job-headers").await.contains("x-reason"));
    browser.screenshot("5-job").await;

    // Replay one rejected job once its cause is fixed: delivered, then gone.
    accept_everything(&app);
    browser
        .client
        .goto(&format!("{url}/apps/{APP}/dead"))
        .await
        .unwrap();
    browser
        .click("tr[data-job-id=\"rejected-0\"] input[data-test=select-job]")
        .await;
    browser.click("#replay-selected").await;
    assert_eq!(browser.text("#confirm-count").await.trim(), "1");
    browser.screenshot("6-confirm-replay").await;
    browser.click("#confirm-button").await;
    assert!(!browser.text("#flash").await.is_empty());
    assert!(!table_ids(&browser)
        .await
        .contains(&"rejected-0".to_string()));
    app.wait_for(
        "the replayed job delivered",
        Duration::from_secs(30),
        |app| app.delivered_texts().contains_key("job:POISON-0"),
    )
    .await;
    assert!(
        !app.delivered_texts().contains_key("job:POISON-1"),
        "only the one replayed"
    );

    // Purge a filter after its confirmation: the four invalid-json go.
    filter_by_reason(&browser, "invalid-json", "4").await;
    browser.click("#purge-filter").await;
    assert_eq!(browser.text("#confirm-count").await.trim(), "4");
    browser.click("#confirm-button").await;
    assert!(!browser.text("#flash").await.is_empty());
    browser
        .client
        .goto(&format!("{url}/apps/{APP}/dead"))
        .await
        .unwrap();
    browser.text("#dead-table").await;
    assert_eq!(table_ids(&browser).await, ["no-body-0", "rejected-1"]);
    browser.screenshot("7-dead-after").await;
    browser.close().await;

    let logs = worker.stop().await;
    assert!(!logs.contains(CONSOLE_TOKEN), "the token is never logged");
    let calls = app.sim.simulator.calls();
    assert!(
        calls.iter().all(|c| c.error_code != Some(10023)),
        "no frequency-limit answer"
    );
}
