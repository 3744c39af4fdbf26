//! The dashboards in a real headless Chromium (Debian's chromium + chromium-driver, driven
//! over WebDriver): a real `cobb server` seeded by real training and a promotion, every page
//! loaded after logging in through the form, key content asserted in the rendered DOM,
//! screenshots saved under target/screenshots/ (CI keeps them as artifacts).
//!
//! Runs when chromedriver is on the PATH; `COBB_REQUIRE_BROWSER=1` (set by .ci/run) makes a
//! missing browser a failure instead of a skip.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const COBB: &str = env!("CARGO_BIN_EXE_cobb");

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn wait_for(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cobb(dir: &Path, url: &str, args: &[&str]) -> String {
    let key = dir.join("site.key");
    data::pseudonym::PseudonymKey::load_or_create(&key).expect("site key");
    let out = Command::new(COBB)
        .args(args)
        .current_dir(dir)
        .env("COBB_SERVER", url)
        .env("COBB_PSEUDONYM_KEY_FILE", &key)
        .env_remove("COBB_TOKEN")
        .output()
        .expect("cobb");
    assert!(out.status.success(), "cobb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A WebDriver session on chromedriver.
struct Browser {
    http: reqwest::blocking::Client,
    base: String,
    _driver: Kill,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start() -> Option<Self> {
        let port = free_port();
        let driver = match Command::new("chromedriver").arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
            Ok(child) => Kill(child),
            Err(e) => {
                assert!(std::env::var("COBB_REQUIRE_BROWSER").is_err(), "COBB_REQUIRE_BROWSER is set but chromedriver cannot start: {e}");
                eprintln!("skipping the browser test: chromedriver not found ({e}); apt-get install chromium chromium-driver");
                return None;
            }
        };
        wait_for(port);
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1600"]}}}});
        let session: Value =
            http.post(format!("http://127.0.0.1:{port}/session")).json(&caps).send().expect("new session").json().expect("json");
        let id = session["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {session}")).to_owned();
        Some(Self { http, base: format!("http://127.0.0.1:{port}/session/{id}"), _driver: driver })
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().expect("webdriver").json().expect("json");
        assert!(answer["value"]["error"].is_null(), "webdriver {path}: {answer}");
        answer["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})));
    }

    fn find(&self, css: &str) -> String {
        let found = self.call(reqwest::Method::POST, "/element", Some(json!({"using": "css selector", "value": css})));
        found[ELEMENT].as_str().expect("element id").to_owned()
    }

    fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.call(reqwest::Method::POST, &format!("/element/{element}/value"), Some(json!({"text": text})));
    }

    fn click(&self, css: &str) {
        let element = self.find(css);
        self.call(reqwest::Method::POST, &format!("/element/{element}/click"), Some(json!({})));
    }

    fn script(&self, js: &str) -> Value {
        self.call(reqwest::Method::POST, "/execute/sync", Some(json!({"script": js, "args": []})))
    }

    /// The rendered page's text, its title, and the number of inline SVG charts.
    fn look(&self) -> (String, String, u64) {
        let text = self.script("return document.body.innerText").as_str().unwrap_or_default().to_owned();
        let title = self.script("return document.title").as_str().unwrap_or_default().to_owned();
        let svgs = self.script("return document.querySelectorAll('svg').length").as_u64().unwrap_or(0);
        (text, title, svgs)
    }

    fn screenshot(&self, to: &Path) {
        let png = self.call(reqwest::Method::GET, "/screenshot", None);
        let bytes = base64_decode(png.as_str().expect("base64"));
        std::fs::write(to, bytes).expect("screenshot written");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(&self.base).send();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &c)| acc | (u32::from(value(c)) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

#[test]
fn every_dashboard_page_renders_real_numbers_in_chromium() {
    let Some(browser) = Browser::start() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
    let _server = Kill(
        Command::new(COBB)
            .args(["server", "--bind", &format!("127.0.0.1:{port}")])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("server"),
    );
    wait_for(port);
    let url = format!("http://127.0.0.1:{port}");
    cobb(dir.path(), &url, &["phantoms", "--out", "ph", "--count", "150", "--size", "40"]);
    cobb(dir.path(), &url, &["dataset", "register", "phantoms", "ph"]);
    let spec = "name: browser\ndescription: \"<script>document.title='pwned'</script> phantoms\"\ndataset: {name: phantoms}\n\
                model: {arch: simple_cnn, image_size: 32}\n\
                train: {epochs: 3, batch_size: 16, seed: 1, optimizer: {name: adamw, lr: 0.003}}\n\
                sweep:\n  method: grid\n  early_stop: {method: asha, min_epochs: 1, reduction_factor: 2}\n  \
                parameters:\n    train.optimizer.lr: {values: [0.003, 0.001, 0.0003]}\n    model.dropout: {values: [0.0, 0.3]}\n";
    std::fs::write(dir.path().join("b.yaml"), spec).expect("spec");
    cobb(dir.path(), &url, &["submit", "b.yaml"]);
    cobb(dir.path(), &url, &["worker", "--name", "w1", "--exit-when-idle"]);
    let _worker = Kill(
        Command::new(COBB)
            .args(["worker", "--name", "evaluator"])
            .current_dir(dir.path())
            .env("COBB_SERVER", &url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("worker"),
    );
    let report = cobb(dir.path(), &url, &["promote", "1", "--reason", "best validation macro-F1 <b>bold?</b>"]);
    assert!(report.contains("macro avg"), "{report}");
    // The promoted model sorts a folder (here: one class's training phantoms and a stray file).
    std::fs::write(dir.path().join("ph/ap_preop/notes.txt"), "not an image").expect("stray file");
    let sorted = cobb(dir.path(), &url, &["classify", "ph/ap_preop", "--experiment", "browser", "--out", "sorted.csv"]);
    assert!(sorted.contains("batch 1 (succeeded)"), "{sorted}");

    let token = std::fs::read_to_string(dir.path().join("cobb-data/admin.token")).expect("admin token");
    browser.go(&format!("{url}/ui/experiments"));
    let (text, title, _) = browser.look();
    assert!(title.starts_with("Log in"), "{title}: {text}");
    browser.type_into("input[name=token]", token.trim());
    browser.click("form[action='/ui/login'] button");
    let shots = screenshots();
    let pages: [(&str, &str, &[&str], u64); 9] = [
        ("experiments", "/ui/experiments", &["browser", "<script>document.title='pwned'</script> phantoms", "run 1"], 0),
        (
            "experiment",
            "/ui/experiments/browser",
            &[
                "Promoted model",
                "lat_postop_tether",
                "Ingestion report",
                "best validation macro-F1 <b>bold?</b>",
                "Validation budget: 6 configuration(s) scored",
            ],
            0,
        ),
        (
            "sweep",
            "/ui/sweeps/1",
            &[
                "worst-class recall",
                "train.optimizer.lr",
                "succeeded",
                "early stop: asha on val_macro_f1",
                "This sweep scored 6 configuration(s)",
                "The search",
                "Which hyperparameters matter",
            ],
            3,
        ),
        (
            "run",
            "/ui/runs/1",
            &[
                "Learning curves",
                "Per class at the best epoch",
                "ap_preop",
                "Confusion matrix",
                "best checkpoint sha256",
                "Validation with 95% intervals",
                "Test with 95% intervals",
                "Patient-level bootstrap",
                "after temperature scaling",
                "Reliability",
            ],
            4,
        ),
        (
            "compare",
            "/ui/compare?runs=1,2",
            &[
                "Precision and recall per class",
                "Roll-up by view",
                "Confusion-matrix difference",
                "Is the difference more than noise?",
                "McNemar p",
                "interval of the paired difference on the same validation patients",
                "[95%: ",
            ],
            2,
        ),
        ("audit", "/ui/audit", &["Hash chain verified", "evaluation.succeed", "promotion.create"], 0),
        (
            "promotion",
            "/ui/promotions/1",
            &[
                "Sealed test split",
                "macro avg",
                "weighted avg",
                "Download CSV",
                "Study report",
                "With 95% intervals",
                "Calibration on the test split",
                "Reliability on the test split",
                "Auto-accept thresholds",
            ],
            1,
        ),
        (
            "batch",
            "/ui/classifications/1",
            &["Classification batch 1: browser", "Per class", "lat_postop_tether", "Skipped files (1)", "notes.txt", "not an image"],
            0,
        ),
        (
            "study",
            "/ui/promotions/1/study",
            &[
                "Study report: browser",
                "Data and its flow per split",
                "appear in more than one split",
                "Results with 95% intervals",
                "TO BE WRITTEN BY THE AUTHORS",
            ],
            0,
        ),
    ];
    for (name, path, needles, charts) in pages {
        browser.go(&format!("{url}{path}"));
        let (text, title, svgs) = browser.look();
        browser.screenshot(&shots.join(format!("{name}.png")));
        assert!(!title.starts_with("Error") && title != "pwned", "{path}: {title}\n{text}");
        for needle in needles {
            assert!(text.contains(needle), "{path}: `{needle}` not on the page:\n{text}");
        }
        assert!(svgs >= charts, "{path}: {svgs} SVG charts, expected {charts}");
    }
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    assert!(!log.contains(" ERROR "), "the server logged errors:\n{log}");
}
