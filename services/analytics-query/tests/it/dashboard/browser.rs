//! A real headless Chromium driven over the DevTools protocol (a WebSocket): navigate, evaluate
//! JavaScript in the page, wait for a condition, take screenshots. No virtual time, so the
//! page's own `performance` entries are wall-clock figures.

use std::{path::Path, process::Stdio, time::Duration};

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use learntrail_testkit::eventually;
use serde_json::{Value, json};
use tokio::{net::TcpStream, process::Child};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async, tungstenite::Message};

pub struct Browser {
    _child: Child,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// The browser binary: `CHROMIUM`, else Debian's `chromium` (scripts/deps.sh --test installs it).
fn binary() -> String {
    let name = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} is not installed: run scripts/deps.sh --test (make test-deps)"
    );
    name
}

impl Browser {
    pub async fn launch() -> Self {
        let profile = tempfile::tempdir().unwrap();
        let child = tokio::process::Command::new(binary())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--window-size=1280,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let port_file = profile.path().join("DevToolsActivePort");
        let port: u16 = eventually(Duration::from_secs(30), "chromium's DevTools port", || {
            let text = std::fs::read_to_string(&port_file).ok();
            async move { text?.lines().next()?.trim().parse().ok() }
        })
        .await;
        let list = format!("http://127.0.0.1:{port}/json/list");
        let url: String = eventually(Duration::from_secs(30), "chromium's page target", || {
            let list = list.clone();
            async move {
                let targets: Value = reqwest::get(&list).await.ok()?.json().await.ok()?;
                targets.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
                    .as_str()
                    .map(str::to_string)
            }
        })
        .await;
        let (ws, _) = connect_async(url.as_str()).await.unwrap();
        let mut browser = Self {
            _child: child,
            ws,
            next_id: 0,
            _profile: profile,
        };
        // every page records what its Content-Security-Policy blocked, in `window.cspViolations`
        browser.call("Page.enable", json!({})).await;
        browser
            .call(
                "Page.addScriptToEvaluateOnNewDocument",
                json!({ "source": "window.cspViolations = []; \
                    document.addEventListener('securitypolicyviolation', \
                    e => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));" }),
            )
            .await;
        browser
    }

    /// Sends a DevTools command and returns its result (events in between are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let text = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(text)).await.unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(60), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("DevTools socket closed")
                .unwrap();
            let Message::Text(text) = message else {
                continue;
            };
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["id"] == id {
                assert!(value.get("error").is_none(), "{method}: {value}");
                return value["result"].clone();
            }
        }
    }

    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    /// Evaluates `expression` in the page (promises awaited) and returns its JSON value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy in the page (an exception, as while the page is still
    /// loading, counts as not yet); returns its value.
    pub async fn wait_for(&mut self, expression: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        let guarded = format!(
            "(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        );
        loop {
            let value = self.eval(&guarded).await;
            if !matches!(value, Value::Null | Value::Bool(false)) && value != json!("") {
                return value;
            }
            if tokio::time::Instant::now() > deadline {
                let body = self
                    .eval("document.body ? document.body.outerHTML : ''")
                    .await;
                panic!("{expression} stayed false for {within:?}; page: {body}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Saves a PNG of the viewport (the whole page when `full`).
    pub async fn screenshot(&mut self, path: &Path, full: bool) {
        let result = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": full}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(result["data"].as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}
