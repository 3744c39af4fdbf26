//! The dashboards over HTTP: login, session cookie, every page with real numbers, CSRF on
//! the promote form, and escaping of user-supplied text.

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::Value;

use crate::helpers::{CLASSES, TestApp, fails, ok};
use crate::promotions::finish_a_run;

crate::on_both_databases!(the_dashboards_show_real_numbers_behind_a_login);

const XSS: &str = "<script>alert('cobb')</script>";

pub(crate) struct Browser {
    http: reqwest::Client,
    root: String,
    cookie: Option<String>,
}

impl Browser {
    pub(crate) fn new(app: &TestApp) -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Self { http, root: app.base.trim_end_matches("/api/v1").to_owned(), cookie: None }
    }

    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        let mut request = self.http.get(format!("{}{path}", self.root));
        if let Some(c) = &self.cookie {
            request = request.header(COOKIE, c);
        }
        request.send().await.expect("get")
    }

    pub(crate) async fn page(&self, path: &str) -> String {
        let response = self.get(path).await;
        let status = response.status();
        let body = response.text().await.expect("body");
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert!(!body.contains(XSS), "{path} renders user text unescaped");
        body
    }

    pub(crate) async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self.http.post(format!("{}{path}", self.root)).form(form);
        if let Some(c) = &self.cookie {
            request = request.header(COOKIE, c);
        }
        request.send().await.expect("post")
    }

    pub(crate) async fn login(&mut self, token: &str) -> reqwest::Response {
        let response = self.post("/ui/login", &[("token", token), ("next", "/ui/audit")]).await;
        if let Some(set) = response.headers().get(SET_COOKIE).and_then(|v| v.to_str().ok()) {
            self.cookie = set.split(';').next().map(str::to_owned);
        }
        response
    }
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + 19;
    page[at..].split('"').next().expect("value").to_owned()
}

async fn the_dashboards_show_real_numbers_behind_a_login(app: TestApp) {
    app.register_dataset("d", &CLASSES, 10).await;
    let yaml = format!(
        "name: e\ndescription: \"{XSS}\"\ndataset: {{name: d}}\nmodel: {{arch: simple_cnn, image_size: 32}}\n\
         train: {{epochs: 2, batch_size: 4, seed: 1, optimizer: {{name: adamw, lr: 0.001}}}}\n\
         sweep:\n  method: grid\n  parameters:\n    train.optimizer.lr: {{values: [0.01, 0.001]}}\n"
    );
    let submitted: Value = ok(app.submit(&yaml).await).await;
    let sweep = submitted["sweep_id"].as_i64().expect("sweep id");
    let worker = app.token("w", "worker").await;
    let a = finish_a_run(&app, &worker).await;
    let b = finish_a_run(&app, &worker).await;
    let viewer = app.token("v", "viewer").await;
    let reviewer = app.token("r", "reviewer").await;

    let mut browser = Browser::new(&app);
    // Every page needs a login.
    let response = browser.get("/ui/experiments").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/ui/login?next=/ui/experiments");
    assert_eq!(browser.login("cobb_not_a_token").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(browser.login(&worker).await.status(), StatusCode::UNAUTHORIZED, "worker tokens see no dashboards");
    let response = browser.login(&viewer).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/ui/audit");
    let set = response.headers()[SET_COOKIE].to_str().expect("cookie");
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");

    let page = browser.page("/ui/experiments").await;
    assert!(page.contains("&lt;script&gt;"), "the description is shown, escaped");
    assert!(page.contains(&format!("/ui/runs/{a}")) || page.contains(&format!("/ui/runs/{b}")), "best run linked");
    let page = browser.page("/ui/experiments/e").await;
    assert!(page.contains("lat_preop") && page.contains("Ingestion report") && page.contains("sweep:"), "{page}");
    let page = browser.page(&format!("/ui/sweeps/{sweep}")).await;
    assert!(page.contains("worst-class recall") && page.contains("train.optimizer.lr"), "{page}");
    assert!(page.contains("0.500") && page.contains("lat_preop"), "worst-class recall 0.5 on lat_preop: {page}");
    let page = browser.page(&format!("/ui/sweeps/{sweep}?sort=-worst_recall&status=succeeded")).await;
    assert!(page.contains("succeeded"), "{page}");
    let page = browser.page(&format!("/ui/runs/{a}")).await;
    assert!(page.contains("<svg") && page.contains("Learning curves"), "charts inline");
    assert!(page.contains("0.667") && page.contains("0.500"), "per-class precision/recall: {page}");
    assert!(!page.contains("Promote to the test split"), "a viewer sees no promote form");
    let page = browser.page(&format!("/ui/compare?runs={a},{b}")).await;
    assert!(page.contains("Precision per class") && page.contains("<svg") && page.contains("Confusion-matrix difference"), "{page}");
    assert!(page.contains("Roll-up by view"), "{page}");
    // The page shows the numbers of GET /compare, which `cobb compare` prints too.
    let cmp: Value = app.read(&viewer, &format!("/compare?runs={a},{b}&baseline={b}")).await;
    assert_eq!(cmp["baseline"], b);
    let page = browser.page(&format!("/ui/compare?runs={a},{b}&baseline={b}")).await;
    let rows = cmp["classes"].as_array().expect("classes");
    assert_eq!(rows.len(), CLASSES.len());
    for row in rows.iter().chain(cmp["by_view"].as_array().expect("by view")).chain(cmp["by_phase"].as_array().expect("by phase")) {
        assert!(page.contains(row["class"].as_str().expect("class")), "{row}");
        for cell in row["precision"].as_array().expect("p").iter().chain(row["recall"].as_array().expect("r")) {
            let value = cell["value"].as_f64().expect("both runs have results");
            assert!(page.contains(&format!("{value:.3}")), "{value:.3} missing from the compare page");
            if let Some(delta) = cell["delta"].as_f64().filter(|d| *d != 0.0) {
                assert!(page.contains(&format!("({delta:+.3})")), "delta {delta:+.3} missing");
            }
        }
    }
    fails(app.get(&viewer, "/compare?runs=1").await, StatusCode::BAD_REQUEST, "invalid_request").await;
    fails(app.get(&viewer, "/compare?runs=1,x").await, StatusCode::BAD_REQUEST, "invalid_request").await;
    let page = browser.page("/ui/audit").await;
    assert!(page.contains("Hash chain verified"), "{page}");
    assert_eq!(browser.get("/ui/compare?runs=1").await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(browser.get("/ui/runs/999999").await.status(), StatusCode::NOT_FOUND);

    // Promote from the run page: reviewer role and the session's CSRF token.
    let csrf = csrf_of(&browser.page("/ui/audit").await);
    let denied = browser.post(&format!("/ui/runs/{a}/promote"), &[("reason", "x"), ("csrf", &csrf)]).await;
    assert_eq!(denied.status(), StatusCode::FORBIDDEN, "viewers cannot promote");
    browser.login(&reviewer).await;
    let page = browser.page(&format!("/ui/runs/{a}")).await;
    assert!(page.contains("Promote to the test split"));
    let csrf = csrf_of(&page);
    let forged = browser.post(&format!("/ui/runs/{a}/promote"), &[("reason", "x"), ("csrf", "forged")]).await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN, "a form without the session's CSRF token is refused");
    let promoted = browser.post(&format!("/ui/runs/{a}/promote"), &[("reason", XSS), ("csrf", &csrf)]).await;
    assert_eq!(promoted.status(), StatusCode::SEE_OTHER);
    let location = promoted.headers()[LOCATION].to_str().expect("location").to_owned();
    let page = browser.page(&location).await;
    assert!(page.contains("&lt;script&gt;") && page.contains("queued"), "{page}");

    // Scripts may use a bearer token instead of the cookie.
    let response = reqwest::Client::new().get(format!("{}/ui/audit", browser.root)).bearer_auth(&viewer).send().await.expect("get");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.text().await.expect("body");
    assert!(body.contains("promotion.create") && !body.contains(XSS), "{body}");
    // Logging out ends the session.
    let csrf = csrf_of(&browser.page("/ui/audit").await);
    assert_eq!(browser.post("/ui/logout", &[("csrf", &csrf)]).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(browser.get("/ui/audit").await.status(), StatusCode::SEE_OTHER);
}
