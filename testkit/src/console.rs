//! The console under test: a test app whose dead-letter queue holds dead
//! letters of several reasons, and the worker binary serving it with the
//! console on, its ops endpoint's URL read from its first line and its logs
//! kept (to check that the token never shows in them). Also dead letters
//! published by hand, and a page's forms and links read as a browser would
//! post and follow them.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broadcast_worker::simulator::FaultPlan;

use crate::harness::{
    refuse_bodies_containing, spawn_app, text_job, TestApp, ADMIN, AMQP_URL, APP, KEY,
};
use crate::process::{signal, wait_exit};

/// The console token the tests use.
pub const CONSOLE_TOKEN: &str = "console-test-token-5f1d0c9a";

/// The body of the dead letter that tries to inject a script.
pub const SCRIPT_BODY: &str = "<script>alert(1)</script>";

/// What [`app_with_dead_letters`] puts in the dead-letter queue, by reason:
/// `invalid-json` (`bad-json-0..2` and `script-0`, whose body is
/// [`SCRIPT_BODY`]), `invalid-job` (`no-body-0`), and `rejected` with
/// ErrorCode 10004 (`rejected-0..1`, refused by the simulator while its
/// fault plan holds; [`accept_everything`] lifts it, so a replay delivers).
pub const DEAD_LETTERS: [(&str, usize); 3] =
    [("invalid-json", 4), ("invalid-job", 1), ("rejected", 2)];

/// A test app at 100 calls/s whose dead-letter queue holds the dead
/// letters of [`DEAD_LETTERS`]; the worker that made them is stopped.
pub async fn app_with_dead_letters(test: &str) -> TestApp {
    let mut app = spawn_app(test, 100.0).await;
    app.sim
        .simulator
        .set_faults(refuse_bodies_containing("POISON", 10004));
    for i in 0..3 {
        app.publish_raw(Some(&format!("bad-json-{i}")), b"{not json", None)
            .await;
    }
    app.publish_raw(Some("script-0"), SCRIPT_BODY.as_bytes(), None)
        .await;
    app.publish_raw(Some("no-body-0"), br#"{"From_Account": "x"}"#, None)
        .await;
    for i in 0..2 {
        let mut body = text_job(&format!("POISON-{i}"));
        // A sender each, so that every refused job is its own call.
        body["From_Account"] = format!("sender-{i}").into();
        app.publish(&format!("rejected-{i}"), &body).await;
    }
    app.start_worker();
    let total: usize = DEAD_LETTERS.iter().map(|(_, n)| n).sum();
    app.wait_for_dead(total as u32, Duration::from_secs(60))
        .await;
    app.stop_worker().await.expect("the worker stops");
    app
}

/// The simulator takes every job again (the cause of `rejected` is fixed).
pub fn accept_everything(app: &TestApp) {
    app.sim.simulator.set_faults(FaultPlan::default());
}

/// The worker binary serving `app` with the console on.
pub struct ConsoleWorker {
    pub child: Child,
    /// The ops endpoint, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    logs: Arc<Mutex<Vec<u8>>>,
}

/// `broadcast-worker run` for `app` (its queues and simulator, at 50 calls/s,
/// trace logs on standard error) with its ops endpoint on a free port and
/// `extra` environment, e.g. `("BROADCAST_CONSOLE_TOKEN", CONSOLE_TOKEN)`.
/// Without a token in `extra` the console is off.
pub fn console_worker(bin: &str, app: &TestApp, extra: &[(&str, &str)]) -> ConsoleWorker {
    let mut command = Command::new(bin);
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
        .env("RUST_LOG", "trace")
        .env_remove("DATABASE_URL")
        .env_remove("TIM_SECRET_KEY_FILE")
        .env_remove("BROADCAST_CONSOLE_TOKEN")
        .env_remove("BROADCAST_CONSOLE_TOKEN_FILE")
        .env_remove("BROADCAST_TEST_CRASH_AT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("the worker binary starts");
    // Trace logs are plenty: read them as they come, or the pipe fills up.
    let logs = Arc::new(Mutex::new(Vec::new()));
    let mut stderr = child.stderr.take().expect("stderr is piped");
    std::thread::spawn({
        let logs = logs.clone();
        move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                logs.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        }
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout is piped"))
        .read_line(&mut line)
        .expect("the worker prints its ops endpoint");
    let url = line
        .trim()
        .strip_prefix("ops endpoint listening on ")
        .unwrap_or_else(|| panic!("no ops endpoint in {line:?}"))
        .to_string();
    ConsoleWorker { child, url, logs }
}

impl ConsoleWorker {
    /// Everything the worker logged so far.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.logs.lock().unwrap()).into_owned()
    }

    /// SIGTERM, and its exit awaited; returns every log line.
    pub async fn stop(mut self) -> String {
        signal(&self.child, "-TERM");
        wait_exit(&mut self.child, Duration::from_secs(20)).await;
        // The reader thread sees the pipe close; give it a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.logs()
    }
}

impl Drop for ConsoleWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that follows no redirect, so tests see each 303 and cookie.
pub fn console_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Logs in with `token`; returns the session cookie (`name=value`).
pub async fn console_login(client: &reqwest::Client, url: &str, token: &str) -> String {
    let response = client
        .post(format!("{url}/login"))
        .form(&[("token", token), ("next", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 303, "the login is taken");
    let cookie = response
        .headers()
        .get("set-cookie")
        .expect("a session cookie")
        .to_str()
        .unwrap();
    cookie.split(';').next().unwrap().to_string()
}

/// The CSRF token of the first form of a page (its hidden `csrf` field).
pub fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token");
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// `GET url` as a script would, with the test token as a bearer; the status
/// and the JSON answered.
pub async fn console_api(client: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let response = client
        .get(url)
        .bearer_auth(CONSOLE_TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// `POST url` with a JSON `body` and the test token as a bearer.
pub async fn console_api_post(
    client: &reqwest::Client,
    url: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = client
        .post(url)
        .bearer_auth(CONSOLE_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Publishes one dead letter straight to the app's dead-letter exchange, as
/// the worker would have dead-lettered it with `reason` a moment ago; with
/// no `id` its id is its body's digest.
pub async fn add_dead_letter(app: &TestApp, id: Option<&str>, reason: &str, body: &[u8]) {
    use broadcast_worker::broker::headers;
    use lapin::types::{AMQPValue, FieldTable};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut table = FieldTable::default();
    table.insert(headers::REASON.into(), AMQPValue::LongString(reason.into()));
    table.insert(
        headers::ERROR_INFO.into(),
        AMQPValue::LongString("added by a test".into()),
    );
    table.insert(headers::FIRST_SEEN.into(), AMQPValue::LongLongInt(now));
    table.insert(
        headers::DEAD_LETTERED_AT.into(),
        AMQPValue::LongLongInt(now),
    );
    let mut properties = lapin::BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(table);
    if let Some(id) = id {
        properties = properties.with_message_id(id.into());
    }
    app.publish_dead_letters(std::iter::once((body.to_vec(), properties)), 1)
        .await;
}

/// Text as maud escapes it in an attribute or an element, back as it was.
pub fn html_unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The attributes of one HTML tag's text (`<input a="b" c="d">`), unescaped.
fn attributes(tag: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq]
            .rsplit([' ', '<'])
            .next()
            .unwrap_or("")
            .to_string();
        let value_start = eq + 2;
        let Some(len) = rest[value_start..].find('"') else {
            break;
        };
        out.push((name, html_unescape(&rest[value_start..value_start + len])));
        rest = &rest[value_start + len + 1..];
    }
    out
}

/// The hidden fields of the form whose id is `form_id` on `page`, in order,
/// their values unescaped: what a browser would post with it.
pub fn hidden_fields(page: &str, form_id: &str) -> Vec<(String, String)> {
    let start = page
        .find(&format!("id=\"{form_id}\""))
        .unwrap_or_else(|| panic!("no form {form_id:?} in {page}"));
    let form = &page[start..];
    let form = &form[..form.find("</form>").unwrap_or(form.len())];
    form.split("<input")
        .skip(1)
        .filter_map(|input| {
            let tag = &input[..input.find('>').unwrap_or(input.len())];
            let attrs = attributes(tag);
            let get = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            (get("type").as_deref() == Some("hidden"))
                .then(|| Some((get("name")?, get("value").unwrap_or_default())))
                .flatten()
        })
        .collect()
}

/// The `href` of the first link on `page` whose tag holds `marker` (an
/// attribute such as `data-test="job-link"` after a row's `data-job-id`),
/// unescaped.
pub fn href_after(page: &str, marker: &str) -> Option<String> {
    let at = page.find(marker)?;
    let rest = &page[at..];
    let href = rest.find("href=\"")? + "href=\"".len();
    let len = rest[href..].find('"')?;
    Some(html_unescape(&rest[href..href + len]))
}
