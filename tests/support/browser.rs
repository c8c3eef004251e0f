//! A real headless Chromium, driven over WebDriver (Debian's chromium and
//! chromium-driver), inside a lab namespace so that its traffic stays in
//! the lab. The WebDriver client is a few lines of HTTP/1.1 over a socket
//! opened in that namespace.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use palisade_lab::{Netns, Proc};
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const DRIVER_PORT: u16 = 9515;

/// A Chromium session. Quits the browser and stops chromedriver on drop.
pub struct Browser<'a> {
    ns: &'a Netns,
    session: String,
    driver: Option<Proc>,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

/// A page element.
#[derive(Clone)]
pub struct Element(String);

impl<'a> Browser<'a> {
    /// Starts chromedriver and a headless Chromium in `ns` that trusts
    /// exactly the certificate whose public key hashes to `spki` (base64
    /// SHA-256 of the SubjectPublicKeyInfo). Screenshots go to `shots`.
    pub fn start(ns: &'a Netns, spki: &str, shots: &Path) -> Browser<'a> {
        let mut cmd = ns.command("chromedriver");
        cmd.arg(format!("--port={DRIVER_PORT}"));
        let driver = Proc::spawn(cmd).expect("start chromedriver");
        let up = palisade_lab::wait_until(Duration::from_secs(20), || {
            ns.run(|| TcpStream::connect(("127.0.0.1", DRIVER_PORT)).is_ok())
        });
        assert!(up, "chromedriver did not start:\n{}", driver.describe());
        let profile = tempfile::tempdir().expect("profile dir");
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1400,1000".into(),
            format!("--user-data-dir={}", profile.path().display()),
            format!("--ignore-certificate-errors-spki-list={spki}"),
        ];
        let mut b = Browser {
            ns,
            session: String::new(),
            driver: Some(driver),
            _profile: profile,
            shots: shots.to_path_buf(),
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
        }}});
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        std::fs::create_dir_all(&b.shots).expect("screenshot dir");
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.try_call(method, path, body);
        assert!(
            status < 300,
            "WebDriver {method} {path} failed ({status}): {v}\nchromedriver:\n{}",
            self.driver
                .as_ref()
                .map(|d| d.describe())
                .unwrap_or_default()
        );
        v["value"].clone()
    }

    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{DRIVER_PORT}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let raw = self.ns.run(move || {
            let mut s = TcpStream::connect(("127.0.0.1", DRIVER_PORT)).expect("reach chromedriver");
            s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
            s.write_all(request.as_bytes())
                .expect("send to chromedriver");
            // chromedriver may keep the connection open: read what the
            // headers announce, not to the end.
            let mut raw = Vec::new();
            let mut buf = [0u8; 64 << 10];
            loop {
                let n = s.read(&mut buf).expect("read from chromedriver");
                raw.extend_from_slice(&buf[..n]);
                if n == 0 || complete(&raw) {
                    return raw;
                }
            }
        });
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP answer");
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status");
        let mut body = raw[split + 4..].to_vec();
        if head.contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, v)
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", &self.s("/url"), Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.call("GET", &self.s("/url"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The first element matching `css`, if any now.
    pub fn find(&self, css: &str) -> Option<Element> {
        let (status, v) = self.try_call(
            "POST",
            &self.s("/element"),
            Some(json!({"using": "css selector", "value": css})),
        );
        (status < 300).then(|| Element(v["value"][ELEMENT].as_str().unwrap().to_string()))
    }

    /// Waits up to 20 s for an element matching `css`.
    pub fn wait(&self, css: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(e) = self.find(css) {
                return e;
            }
            if Instant::now() > deadline {
                let shot = self.screenshot("timeout");
                panic!(
                    "no element {css:?} on {} after 20 s (screenshot {})\nconsole/page text:\n{}",
                    self.url(),
                    shot.display(),
                    self.js("return document.body ? document.body.innerText : ''")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for the script to return true.
    pub fn wait_js(&self, script: &str, timeout: Duration) -> bool {
        palisade_lab::wait_until(timeout, || self.js(script) == Value::Bool(true))
    }

    pub fn click(&self, e: &Element) {
        self.call(
            "POST",
            &self.s(&format!("/element/{}/click", e.0)),
            Some(json!({})),
        );
    }

    pub fn clear(&self, e: &Element) {
        self.call(
            "POST",
            &self.s(&format!("/element/{}/clear", e.0)),
            Some(json!({})),
        );
    }

    pub fn type_text(&self, e: &Element, text: &str) {
        self.call(
            "POST",
            &self.s(&format!("/element/{}/value", e.0)),
            Some(json!({ "text": text })),
        );
    }

    pub fn text(&self, e: &Element) -> String {
        self.call("GET", &self.s(&format!("/element/{}/text", e.0)), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// The value of the cookie `name` (HttpOnly ones too).
    pub fn cookie(&self, name: &str) -> Option<String> {
        let (status, v) = self.try_call("GET", &self.s(&format!("/cookie/{name}")), None);
        (status < 300).then(|| v["value"]["value"].as_str().unwrap_or_default().to_string())
    }

    /// Saves a PNG of the page as `NAME.png` and returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.call("GET", &self.s("/screenshot"), None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
        path
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.try_call("DELETE", &self.s(""), None);
        }
        if let Some(mut d) = self.driver.take() {
            d.stop();
        }
        // Chromium's helpers must not outlive the test: end what is left of
        // them in this namespace, by pid.
        for pid in self.ns.pids() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim().starts_with("chrom") {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Whether `raw` holds a whole HTTP answer.
fn complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// The base64 SHA-256 of the SubjectPublicKeyInfo of the PEM certificate at
/// `cert`: what `--ignore-certificate-errors-spki-list` takes.
pub fn spki_hash(cert: &Path) -> String {
    let pem = std::fs::read_to_string(cert).expect("read the certificate");
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("a PEM certificate");
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version?,
    // serial, signature, issuer, validity, subject, subjectPublicKeyInfo …
    let (cert_body, _) = der_content(&der);
    let (mut tbs, _) = der_content(cert_body);
    if tbs[0] == 0xa0 {
        tbs = der_skip(tbs);
    }
    for _ in 0..5 {
        tbs = der_skip(tbs);
    }
    let len = der_len(tbs);
    let spki = &tbs[..len];
    base64::engine::general_purpose::STANDARD.encode(palisade_wire::sha256(spki))
}

/// The content of the DER element at the start of `b`, and the rest.
fn der_content(b: &[u8]) -> (&[u8], &[u8]) {
    let (header, len) = der_header(b);
    (&b[header..header + len], &b[header + len..])
}

fn der_header(b: &[u8]) -> (usize, usize) {
    let first = b[1];
    if first < 0x80 {
        (2, first as usize)
    } else {
        let n = (first & 0x7f) as usize;
        let len = b[2..2 + n]
            .iter()
            .fold(0usize, |acc, x| (acc << 8) | *x as usize);
        (2 + n, len)
    }
}

/// The whole length (header and content) of the DER element at `b`.
fn der_len(b: &[u8]) -> usize {
    let (h, l) = der_header(b);
    h + l
}

fn der_skip(b: &[u8]) -> &[u8] {
    &b[der_len(b)..]
}

/// `curl` inside `ns`: (HTTP status, body).
pub fn curl(ns: &Netns, args: &[&str]) -> (u16, String) {
    let out = ns
        .command("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Where screenshots go: `target/screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("screenshots")
}
