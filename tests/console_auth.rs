//! The console's gate against a worker process: a login that only ever
//! goes back to a path of the console.

use reqwest::{Client, Response};
use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");
const TOKEN: (&str, &str) = ("BROADCAST_CONSOLE_TOKEN", CONSOLE_TOKEN);

/// `POST /login` with `token` and `next`, with extra headers.
async fn login_as(
    client: &Client,
    url: &str,
    token: &str,
    next: &str,
    headers: &[(&str, &str)],
) -> Response {
    let mut request = client
        .post(format!("{url}/login"))
        .form(&[("token", token), ("next", next)]);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_login_goes_back_only_to_a_path_of_the_console() {
    let app = spawn_app("console-next", 50.0).await;
    let worker = console_worker(BIN, &app, &[TOKEN]);
    let (client, url) = (console_client(), worker.url.clone());
    let kept = [
        "/",
        "/apps/1400000007",
        "/apps/1400000007/dead?reason=rejected&page=2",
        "/apps/1400000007/dead-letter?id=a%2Fb%20c",
    ];
    let refused = [
        "/\t/evil.example",
        "/%09/evil.example",
        "/\r\n/evil.example",
        "/\n/evil.example",
        "/%0d%0a/evil.example",
        "//evil.example",
        "///evil.example",
        "/\\evil.example",
        "/\\/evil.example",
        "\\\\evil.example",
        "/%5Cevil.example",
        "/%5C/evil.example",
        "/%2F/evil.example",
        "/%2f%2fevil.example",
        "/%252F/evil.example",
        "/ /evil.example",
        " //evil.example",
        "\t//evil.example",
        "/\u{3000}/evil.example",
        "https://evil.example",
        "javascript:alert(1)",
        "evil.example",
        "",
    ];
    for (next, to) in kept
        .iter()
        .map(|n| (*n, *n))
        .chain(refused.iter().map(|n| (*n, "/")))
    {
        let response = login_as(&client, &url, CONSOLE_TOKEN, next, &[]).await;
        assert_eq!(response.status().as_u16(), 303, "{next:?}");
        assert_eq!(response.headers()["location"], to, "after {next:?}");
    }
    // As a browser's form would send it: the %09 is a tab once decoded.
    let raw = client
        .post(format!("{url}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={CONSOLE_TOKEN}&next=/%09/evil.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 303);
    assert_eq!(raw.headers()["location"], "/");
    worker.stop().await;
}
