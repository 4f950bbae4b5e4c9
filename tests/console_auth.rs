//! The console's gate against a worker process: wrong tokens (bearer or
//! login) throttled per client while the right token always gets in at
//! once; a logout that ends the session on every replica sharing the
//! ledger (and on its own replica without one); the session cookie marked
//! `Secure` when the console is served over TLS; and a login that only ever
//! goes back to a path of the console.

use std::time::{Duration, Instant};

use reqwest::{Client, Response};
use testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_broadcast-worker");
const TOKEN: (&str, &str) = ("BROADCAST_CONSOLE_TOKEN", CONSOLE_TOKEN);
const TRUST_LOOPBACK: (&str, &str) = ("BROADCAST_CONSOLE_TRUSTED_PROXIES", "127.0.0.1");
/// A wrong token the tests send, never to be logged.
const WRONG: &str = "wrong-token-3b9e77";
/// At most this many wrong tokens before a client must be throttled.
const MOST_BEFORE_THROTTLED: usize = 20;

/// `GET /api/apps` with a bearer `token`, as `forwarded_for` says (through
/// a proxy on loopback).
async fn api_as(client: &Client, url: &str, token: &str, forwarded_for: Option<&str>) -> Response {
    let mut request = client.get(format!("{url}/api/apps")).bearer_auth(token);
    if let Some(hops) = forwarded_for {
        request = request.header("x-forwarded-for", hops);
    }
    request.send().await.unwrap()
}

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

/// The `Retry-After` of a 429, in seconds.
fn retry_after(response: &Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds")
}

/// Sends what `attempt` sends until it is answered 429; every answer before
/// must be 401. Returns how many were refused before, and the 429.
async fn until_throttled<F, Fut>(mut attempt: F) -> (usize, Response)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    for refused in 0..MOST_BEFORE_THROTTLED {
        let response = attempt().await;
        match response.status().as_u16() {
            429 => return (refused, response),
            401 => {}
            other => panic!("a wrong token answered {other}"),
        }
    }
    panic!("{MOST_BEFORE_THROTTLED} wrong tokens in a row and never throttled (429)");
}

#[tokio::test]
async fn wrong_tokens_are_throttled_per_client_and_the_right_token_still_gets_in() {
    let app = spawn_app("console-throttle", 50.0).await;
    let worker = console_worker(BIN, &app, &[TOKEN, TRUST_LOOPBACK]);
    let (client, url) = (console_client(), worker.url.clone());
    // Through the trusted proxy, the client is the hop it added (the last):
    // whatever the client wrote before it is not believed.
    let a = "198.51.100.7, 203.0.113.10";
    let b = "198.51.100.7, 203.0.113.20";

    let (refused, throttled) = until_throttled(|| api_as(&client, &url, WRONG, Some(a))).await;
    assert!(refused >= 1, "the first wrong token is only refused");
    assert!(retry_after(&throttled) >= 1);
    let body: serde_json::Value = throttled.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("retry"), "{body}");

    // The right token from the same client gets in at once, and does not
    // lift the throttle for wrong ones.
    let started = Instant::now();
    let right = api_as(&client, &url, CONSOLE_TOKEN, Some(a)).await;
    assert_eq!(right.status().as_u16(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the right token waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        api_as(&client, &url, WRONG, Some(a))
            .await
            .status()
            .as_u16(),
        429
    );
    // A login from the same client is throttled too, with the form...
    let page = login_as(&client, &url, WRONG, "/", &[("x-forwarded-for", a)]).await;
    assert_eq!(page.status().as_u16(), 429);
    assert!(retry_after(&page) >= 1);
    assert!(page.text().await.unwrap().contains("login-form"));
    // ... and the right token still logs in from it.
    let login = login_as(&client, &url, CONSOLE_TOKEN, "/", &[("x-forwarded-for", a)]).await;
    assert_eq!(login.status().as_u16(), 303);
    assert!(login.headers().contains_key("set-cookie"));

    // Another client has a budget of its own.
    assert_eq!(
        api_as(&client, &url, WRONG, Some(b))
            .await
            .status()
            .as_u16(),
        401
    );
    // Logins alone are throttled the same way.
    let c = [("x-forwarded-for", "203.0.113.30")];
    let (refused, throttled) = until_throttled(|| login_as(&client, &url, WRONG, "/", &c)).await;
    assert!(refused >= 1);
    assert!(retry_after(&throttled) >= 1);
    let login = login_as(&client, &url, CONSOLE_TOKEN, "/", &c).await;
    assert_eq!(login.status().as_u16(), 303, "the right token gets in");

    let logs = worker.stop().await;
    assert!(!logs.contains(CONSOLE_TOKEN), "the token was logged");
    assert!(!logs.contains(WRONG), "a presented token was logged");
}

#[tokio::test]
async fn without_a_trusted_proxy_a_forwarded_for_header_is_no_new_client() {
    let app = spawn_app("console-throttle-xff", 50.0).await;
    let worker = console_worker(BIN, &app, &[TOKEN]);
    let (client, url) = (console_client(), worker.url.clone());
    let mut n = 0;
    let (_, throttled) = until_throttled(|| {
        n += 1;
        let hops = format!("203.0.113.{n}");
        let (client, url) = (client.clone(), url.clone());
        async move { api_as(&client, &url, WRONG, Some(&hops)).await }
    })
    .await;
    assert!(retry_after(&throttled) >= 1);
    assert_eq!(
        api_as(&client, &url, CONSOLE_TOKEN, None)
            .await
            .status()
            .as_u16(),
        200
    );
    worker.stop().await;
}

/// Logs in on `url`; the session cookie (`name=value`) and the CSRF token
/// of the apps page.
async fn session_on(client: &Client, url: &str) -> (String, String) {
    let cookie = console_login(client, url, CONSOLE_TOKEN).await;
    let page = client
        .get(format!("{url}/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let csrf = csrf_of(&page.text().await.unwrap());
    (cookie, csrf)
}

async fn status_with(client: &Client, url: &str, cookie: &str) -> u16 {
    let response = client.get(url).header("cookie", cookie).send().await;
    response.unwrap().status().as_u16()
}

async fn logout(client: &Client, url: &str, cookie: &str, csrf: &str) {
    let response = client
        .post(format!("{url}/logout"))
        .header("cookie", cookie)
        .form(&[("csrf", csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
}

#[tokio::test]
async fn logout_ends_the_session_on_every_replica_sharing_the_ledger() {
    let db = TestDatabase::create("console_logout").await;
    let ledger = broadcast_worker::ledger::Ledger::connect_lazy(&db.url()).unwrap();
    ledger.migrate().await.unwrap();
    let app = spawn_app("console-logout", 50.0).await;
    let url = db.url();
    let env = [TOKEN, ("DATABASE_URL", url.as_str())];
    let (one, two) = (
        console_worker(BIN, &app, &env),
        console_worker(BIN, &app, &env),
    );
    let client = console_client();
    let (cookie, csrf) = session_on(&client, &one.url).await;
    for replica in [&one.url, &two.url] {
        assert_eq!(
            status_with(&client, &format!("{replica}/"), &cookie).await,
            200
        );
    }
    logout(&client, &one.url, &cookie, &csrf).await;
    // A copy of the cookie opens nothing more, on the other replica first.
    for replica in [&two.url, &one.url] {
        for path in ["/", &format!("/apps/{APP}"), "/api/apps"] {
            let status = status_with(&client, &format!("{replica}{path}"), &cookie).await;
            assert_eq!(status, 401, "{replica}{path} after the logout");
        }
    }
    // A new login is a new session, on either replica.
    let (again, _) = session_on(&client, &two.url).await;
    assert_ne!(again, cookie);
    assert_eq!(
        status_with(&client, &format!("{}/", one.url), &again).await,
        200
    );
    let value = cookie.split_once('=').unwrap().1.to_string();
    for replica in [one, two] {
        let logs = replica.stop().await;
        assert!(!logs.contains(&value), "a session was logged");
        assert!(!logs.contains(CONSOLE_TOKEN), "the token was logged");
    }
}

#[tokio::test]
async fn without_a_ledger_logout_ends_the_session_on_its_replica() {
    let app = spawn_app("console-logout-memory", 50.0).await;
    let worker = console_worker(BIN, &app, &[TOKEN]);
    let client = console_client();
    let (cookie, csrf) = session_on(&client, &worker.url).await;
    logout(&client, &worker.url, &cookie, &csrf).await;
    let status = status_with(&client, &format!("{}/", worker.url), &cookie).await;
    assert_eq!(status, 401, "the copied cookie after the logout");
    let (again, _) = session_on(&client, &worker.url).await;
    assert_eq!(
        status_with(&client, &format!("{}/", worker.url), &again).await,
        200
    );
    worker.stop().await;
}

/// Whether a `Set-Cookie` has the `Secure` attribute.
fn is_secure(set_cookie: &str) -> bool {
    set_cookie
        .split(';')
        .any(|attr| attr.trim().eq_ignore_ascii_case("secure"))
}

/// The `Set-Cookie` a login answers, with extra headers.
async fn login_cookie_with(client: &Client, url: &str, headers: &[(&str, &str)]) -> String {
    let response = login_as(client, url, CONSOLE_TOKEN, "/", headers).await;
    assert_eq!(response.status().as_u16(), 303);
    response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn the_cookie_is_secure_over_tls_and_only_a_trusted_proxy_says_so() {
    let app = spawn_app("console-secure", 50.0).await;
    let client = console_client();
    let https = [("x-forwarded-proto", "https")];

    // Told the console is behind TLS: every cookie is Secure.
    let told = console_worker(
        BIN,
        &app,
        &[TOKEN, ("BROADCAST_CONSOLE_SECURE_COOKIE", "true")],
    );
    let set_cookie = login_cookie_with(&client, &told.url, &[]).await;
    assert!(is_secure(&set_cookie), "{set_cookie}");
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    let (cookie, csrf) = session_on(&client, &told.url).await;
    let out = client
        .post(format!("{}/logout", told.url))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    let cleared = out.headers()["set-cookie"].to_str().unwrap();
    assert!(
        is_secure(cleared) && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    told.stop().await;

    // Behind a trusted proxy: Secure when the proxy says the request came
    // over https.
    let proxied = console_worker(BIN, &app, &[TOKEN, TRUST_LOOPBACK]);
    let over_https = login_cookie_with(&client, &proxied.url, &https).await;
    assert!(is_secure(&over_https), "{over_https}");
    let over_http = [("x-forwarded-proto", "http")];
    assert!(!is_secure(
        &login_cookie_with(&client, &proxied.url, &over_http).await
    ));
    assert!(!is_secure(
        &login_cookie_with(&client, &proxied.url, &[]).await
    ));
    proxied.stop().await;

    // Anyone else's X-Forwarded-Proto is not believed.
    let plain = console_worker(BIN, &app, &[TOKEN]);
    assert!(!is_secure(
        &login_cookie_with(&client, &plain.url, &https).await
    ));
    plain.stop().await;
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
