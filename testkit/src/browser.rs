//! A headless Chromium for tests of the console: Debian's `chromium` driven
//! through `chromedriver` (WebDriver), with the flags a machine without
//! internet needs, and screenshots saved as test artifacts.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use fantoccini::Locator;
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A browser session; the driver is killed when dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: PathBuf,
}

/// Where screenshots go: `target/console-screenshots/` of the workspace.
pub fn screenshot_dir() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit sits in the workspace")
        .join("target/console-screenshots")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium. Panics with what to
    /// install when they are missing (`.ci/run` installs them).
    pub async fn start() -> Self {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} is missing: install Debian's {package} package (apt-get install -y chromium chromium-driver)"
            );
        }
        let port = crate::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile =
            std::env::temp_dir().join(format!("bwtest-chromium-{}-{port}", std::process::id()));
        let capabilities = serde_json::json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }
        });
        let capabilities = capabilities.as_object().expect("an object").clone();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            // Plain HTTP: the driver is on loopback.
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() > deadline => {
                    panic!("cannot start a headless Chromium through chromedriver: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        Self {
            client,
            driver,
            profile,
        }
    }

    /// Saves the page as `target/console-screenshots/{name}.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("the screenshot folder");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("the screenshot is written");
        path
    }

    /// The text of the element `css` selects, waiting for it to appear
    /// (and past a page that is being replaced: its elements go stale).
    pub async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let found = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.text().await,
                Err(e) => Err(e),
            };
            match found {
                Ok(text) => return text,
                Err(e) if Instant::now() > deadline => panic!("no element {css}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Waits until the element `css` selects reads `want` (trimmed): the
    /// page that follows a form can hold the same element as the last.
    pub async fn wait_for_text(&self, css: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let text = self.text(css).await;
            if text.trim() == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css} reads {text:?}, not {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element `css` selects, waiting for it as [`Self::text`] does.
    pub async fn click(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let clicked = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.click().await,
                Err(e) => Err(e),
            };
            match clicked {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("cannot click {css}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Waits until the page's path is `path` (after a form posts and redirects).
    pub async fn wait_for_path(&self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let url = self.client.current_url().await.expect("the page's URL");
            if url.path() == path {
                return;
            }
            assert!(Instant::now() < deadline, "still on {url}, not {path}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ends the session.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}
