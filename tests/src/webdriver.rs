//! Just enough of the W3C WebDriver protocol to drive Debian's headless
//! Chromium through its chromedriver: open a page, find elements by CSS,
//! click, read text, take a screenshot. Each call is one HTTP/1.1 request.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver process with one headless browser session; both end on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

fn request(port: u16, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    // chromedriver may keep the connection open: read the head, then exactly the body.
    let mut response = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let (head, mut body) = loop {
        let read = stream.read(&mut buffer)?;
        anyhow::ensure!(read > 0, "chromedriver closed the connection");
        response.extend_from_slice(&buffer[..read]);
        if let Some(at) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break (String::from_utf8_lossy(&response[..at]).to_ascii_lowercase(), response[at + 4..].to_vec());
        }
    };
    let length =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    while length.is_some_and(|n| body.len() < n) || (chunked && !body.ends_with(b"0\r\n\r\n")) {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        body.extend_from_slice(&buffer[..read]);
    }
    let body = String::from_utf8_lossy(&body);
    let payload = if chunked { dechunk(&body) } else { body.into_owned() };
    let value: Value = serde_json::from_str(&payload).with_context(|| format!("chromedriver said: {head}"))?;
    if let Some(error) = value["value"]["error"].as_str() {
        bail!("webdriver {method} {path}: {error}: {}", value["value"]["message"]);
    }
    Ok(value["value"].clone())
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with the flags this
    /// machine needs (no sandbox as root, no background networking).
    pub fn start() -> anyhow::Result<Browser> {
        anyhow::ensure!(
            std::path::Path::new(CHROMEDRIVER).exists(),
            "{CHROMEDRIVER} is missing: install Debian's chromium and chromium-driver (the test command does)"
        );
        let port = crate::smtp_sink::free_port()?;
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "chromedriver did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir()?;
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=900,1000",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
        }}});
        let mut browser = Browser { driver, port, session: String::new(), _profile: profile };
        let created = request(port, "POST", "/session", Some(&capabilities))?;
        browser.session = created["sessionId"].as_str().context("no session id")?.to_owned();
        Ok(browser)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        request(self.port, method, &format!("/session/{}{path}", self.session), body.as_ref())
    }

    pub fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call("POST", "/url", Some(json!({"url": url})))?;
        Ok(())
    }

    /// The element id of the first match of `css`.
    pub fn find(&self, css: &str) -> anyhow::Result<String> {
        let found = self.call("POST", "/element", Some(json!({"using": "css selector", "value": css})))?;
        let id = found.as_object().and_then(|o| o.values().next()).and_then(Value::as_str);
        Ok(id.with_context(|| format!("no element {css}"))?.to_owned())
    }

    /// Waits up to `timeout` for an element to appear (after a click that loads a page).
    pub fn wait_for(&self, css: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.find(css) {
                Ok(id) => return Ok(id),
                Err(error) if Instant::now() > deadline => {
                    return Err(error.context(format!("waited {timeout:?} for {css}")));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    pub fn click(&self, css: &str) -> anyhow::Result<()> {
        let id = self.find(css)?;
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})))?;
        Ok(())
    }

    pub fn text(&self, css: &str) -> anyhow::Result<String> {
        let id = self.find(css)?;
        Ok(self.call("GET", &format!("/element/{id}/text"), None)?.as_str().unwrap_or_default().to_owned())
    }

    pub fn is_selected(&self, css: &str) -> anyhow::Result<bool> {
        let id = self.find(css)?;
        Ok(self.call("GET", &format!("/element/{id}/selected"), None)?.as_bool().unwrap_or(false))
    }

    pub fn title(&self) -> anyhow::Result<String> {
        Ok(self.call("GET", "/title", None)?.as_str().unwrap_or_default().to_owned())
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        use base64::Engine;
        let encoded = self.call("GET", "/screenshot", None)?;
        Ok(base64::engine::general_purpose::STANDARD.decode(encoded.as_str().context("no screenshot")?)?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = request(self.port, "DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
