//! Dead letters whose job ids are odd (`summary`, `.`, `..`, `%2F`, `a/b`,
//! `?x`, `#`, `a+b`, spaces, unicode) against a worker process: each is
//! reached from the link the table gives it, and through the JSON API, over
//! real HTTP (whose clients normalise `.` and `..` away); old links keep
//! working for ids they could reach.

use reqwest::Client;
use serde_json::Value;
use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");

const ODD_IDS: [&str; 13] = [
    "summary",
    ".",
    "..",
    "%2F",
    "a/b",
    "?x",
    "#",
    "a+b",
    " spaced ",
    "dead-letter",
    "~tilde",
    "日本語 ✓",
    "../../api/apps",
];

async fn get(client: &Client, url: &str) -> (u16, String) {
    let response = client
        .get(url)
        .bearer_auth(CONSOLE_TOKEN)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The id a job's page shows, unescaped.
fn shown_id(page: &str) -> String {
    let marker = "data-test=\"job-id\">";
    let at = page.find(marker).expect("a job page") + marker.len();
    html_unescape(&page[at..at + page[at..].find("</code>").unwrap()])
}

#[tokio::test]
async fn every_odd_id_reaches_its_job_in_the_pages_and_the_api() {
    let app = spawn_app("console-ids", 50.0).await;
    for id in ODD_IDS.iter().chain(&["plain-1"]) {
        add_dead_letter(
            &app,
            Some(id),
            "invalid-json",
            format!("body of {id}").as_bytes(),
        )
        .await;
    }
    app.wait_for_len(&app.names.dead, ODD_IDS.len() as u32 + 1)
        .await;
    let worker = console_worker(BIN, &app, &[("BROADCAST_CONSOLE_TOKEN", CONSOLE_TOKEN)]);
    let (client, url) = (console_client(), worker.url.clone());
    let (status, list) = get(&client, &format!("{url}/apps/{APP}/dead?per_page=500")).await;
    assert_eq!(status, 200, "{list}");
    let (_, listing) =
        console_api(&client, &format!("{url}/api/apps/{APP}/dead?per_page=500")).await;

    for id in ODD_IDS {
        // The page, from the table's link.
        let row = format!("data-job-id=\"{}\"", maud::html! { (id) }.into_string());
        let href = href_after(&list, &row).unwrap_or_else(|| panic!("no row for {id:?}"));
        assert!(href.starts_with('/'), "{href}");
        let (status, page) = get(&client, &format!("{url}{href}")).await;
        assert_eq!(status, 200, "{id:?} at {href}: {page}");
        assert_eq!(shown_id(&page), id, "{href}");
        assert!(page.contains(&format!("body of {}", maud::html! { (id) }.into_string())));
        let fields = hidden_fields(&page, "job-actions");
        assert!(
            fields.contains(&("id".to_string(), id.to_string())),
            "{fields:?}"
        );

        // The API, by the link its listing gives, and by the query form.
        let job = listing["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"] == id)
            .unwrap_or_else(|| panic!("{id:?} not listed: {listing}"));
        let api_link = job["api"]
            .as_str()
            .unwrap_or_else(|| panic!("no api link: {job}"));
        let (status, detail) = console_api(&client, &format!("{url}{api_link}")).await;
        assert_eq!(status, 200, "{id:?} at {api_link}: {detail}");
        assert_eq!(detail["id"], id);
        assert_eq!(detail["body_text"], format!("body of {id}"));
        let response = client
            .get(format!("{url}/api/apps/{APP}/dead-letter"))
            .query(&[("id", id)])
            .bearer_auth(CONSOLE_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{id:?} by query");
        let detail: Value = response.json().await.unwrap();
        assert_eq!(detail["id"], id);
    }
    // The summary is still the summary.
    let (status, summary) =
        console_api(&client, &format!("{url}/api/apps/{APP}/dead/summary")).await;
    assert_eq!(status, 200);
    assert_eq!(summary["total"], ODD_IDS.len() + 1, "{summary}");
    // Old links still reach an id they could reach.
    let (status, page) = get(&client, &format!("{url}/apps/{APP}/dead/plain-1")).await;
    assert_eq!((status, shown_id(&page)), (200, "plain-1".to_string()));
    let (status, detail) = console_api(&client, &format!("{url}/api/apps/{APP}/dead/a%2Fb")).await;
    assert_eq!((status, &detail["id"]), (200, &Value::from("a/b")));
    // A job page with no id, or an empty one, says so.
    for query in ["", "?id=", "?id=x&id=y"] {
        let (status, _) = get(&client, &format!("{url}/apps/{APP}/dead-letter{query}")).await;
        assert_eq!(status, 400, "{query:?}");
    }
    app.wait_for_len(&app.names.dead, ODD_IDS.len() as u32 + 1)
        .await;
    worker.stop().await;
}
