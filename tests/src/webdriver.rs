//! Headless Chromium driven through ChromeDriver's WebDriver API (W3C
//! WebDriver, plain HTTP + JSON), for the agent's live page. Chromium runs
//! with the flags ../shared's machine notes give for this closed network.

use std::{path::Path, process::Command, time::Duration};

use serde_json::{Value, json};

use crate::{
    Guard,
    http::{free_port, request},
};

/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session.
pub struct Browser {
    addr: String,
    session: String,
    _driver: Guard,
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium with a fresh profile in
    /// `profile`.
    pub fn start(profile: &Path) -> Browser {
        let port = free_port();
        let driver = Guard(
            Command::new("/usr/bin/chromedriver")
                .arg(format!("--port={port}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start chromedriver (cargo xtask bootstrap installs chromium-driver)"),
        );
        let addr = format!("127.0.0.1:{port}");
        let start = std::time::Instant::now();
        while request(&addr, "GET", "/status", &[], None, Duration::from_secs(2))
            .is_none_or(|r| r.status != 200)
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1400,900",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        }}});
        let body = caps.to_string();
        let r = request(
            &addr,
            "POST",
            "/session",
            &[],
            Some(body.as_bytes()),
            Duration::from_secs(60),
        )
        .expect("create a WebDriver session");
        let v = r.json();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        Browser {
            addr,
            session,
            _driver: driver,
        }
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let body = body.to_string();
        let r = request(
            &self.addr,
            method,
            &path,
            &[],
            (method == "POST").then_some(body.as_bytes()),
            Duration::from_secs(60),
        )
        .unwrap_or_else(|| panic!("WebDriver {method} {path}: no answer"));
        let v = r.json();
        assert!(
            r.status == 200,
            "WebDriver {method} {path}: {} {v}",
            r.status
        );
        v["value"].clone()
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url }));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the current
    /// frame and returns its value.
    pub fn execute(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
    }

    /// Polls `script` until it returns something truthy, up to `limit`.
    pub fn wait_for(&self, script: &str, limit: Duration) -> Value {
        let start = std::time::Instant::now();
        loop {
            let v = self.execute(script, json!([]));
            if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                return v;
            }
            assert!(start.elapsed() < limit, "timed out waiting for: {script}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The element `css` selects (or `xpath`, if it starts with `/`).
    pub fn find(&self, selector: &str) -> Value {
        let using = if selector.starts_with('/') {
            "xpath"
        } else {
            "css selector"
        };
        let v = self.call(
            "POST",
            "/element",
            json!({ "using": using, "value": selector }),
        );
        assert!(v[ELEMENT].is_string(), "{selector}: {v}");
        let mut el = serde_json::Map::new();
        el.insert(ELEMENT.to_owned(), v[ELEMENT].clone());
        Value::Object(el)
    }

    fn element_id(el: &Value) -> String {
        el[ELEMENT]
            .as_str()
            .expect("an element reference")
            .to_owned()
    }

    /// Clicks `el` (at its centre, as a user would).
    pub fn click(&self, el: &Value) {
        self.call(
            "POST",
            &format!("/element/{}/click", Self::element_id(el)),
            json!({}),
        );
    }

    /// Types `text` into `el`.
    pub fn type_into(&self, el: &Value, text: &str) {
        self.call(
            "POST",
            &format!("/element/{}/value", Self::element_id(el)),
            json!({ "text": text }),
        );
    }

    /// Switches into the iframe `el`, or back to the page (`None`).
    pub fn frame(&self, el: Option<&Value>) {
        match el {
            Some(el) => self.call("POST", "/frame", json!({ "id": el })),
            None => self.call("POST", "/frame/parent", json!({})),
        };
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> Vec<u8> {
        let v = self.call("GET", "/screenshot", Value::Null);
        crate::http::base64_decode(v.as_str().expect("base64 PNG"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = request(
            &self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            &[],
            None,
            Duration::from_secs(10),
        );
    }
}
