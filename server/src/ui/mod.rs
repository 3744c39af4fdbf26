//! Server-rendered dashboards under /ui: minijinja templates (templates/, compiled into the
//! binary, HTML auto-escaped) and plotters SVG charts. Pages work without JavaScript.
//!
//! Access: log in with an API token (viewer role or higher) at /ui/login; that sets an
//! HttpOnly, SameSite=Strict session cookie. Scripts may send the token as a bearer header
//! instead. State-changing forms are POST with the session's CSRF token.

pub mod charts;
mod pages;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use minijinja::Environment;
use protocol::Role;
use std::sync::OnceLock;

use crate::clock::now_ms;
use crate::error::ApiError;
use crate::principal::{Principal, hash_token, new_token};
use crate::state::AppState;
use crate::store;

pub const SESSION_COOKIE: &str = "cobb_session";
const SESSION_HOURS: i64 = 12;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(index).service(ui_root).service(ui_root_slash).service(login_form).service(login).service(logout).configure(pages::routes);
}

macro_rules! templates {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_str!(concat!("../../../templates/", $name)))),*]
    };
}

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in templates![
            "base.html",
            "login.html",
            "error.html",
            "experiments.html",
            "experiment.html",
            "sweep.html",
            "run.html",
            "compare.html",
            "audit.html",
            "promotion.html",
            "batch.html",
        ] {
            if let Err(e) = env.add_template(name, source) {
                tracing::error!(template = name, error = %e, "template does not compile");
            }
        }
        env.add_filter("num", |v: f64| if v.is_finite() { format!("{v:.3}") } else { "-".to_owned() });
        env.add_filter("time", |ms: i64| protocol::time::utc(ms));
        env.add_filter("short", |s: String| s.chars().take(12).collect::<String>());
        env
    })
}

/// Renders `template` with `ctx`; the viewer's name and CSRF token are added for the layout.
pub(crate) fn render(template: &str, viewer: Option<&Viewer>, view: &impl serde::Serialize) -> HttpResponse {
    let mut ctx = match serde_json::to_value(view) {
        Ok(ctx) => ctx,
        Err(e) => {
            tracing::error!(template, error = %e, "page view failed to serialise");
            return HttpResponse::InternalServerError()
                .content_type("text/plain; charset=utf-8")
                .body(format!("page failed to render: {e}"));
        }
    };
    if let (Some(v), Some(map)) = (viewer, ctx.as_object_mut()) {
        map.insert("me".into(), serde_json::json!({"name": v.principal.name, "role": v.principal.role, "csrf": v.csrf}));
    }
    match env().get_template(template).and_then(|t| t.render(minijinja::value::Serde(&ctx))) {
        Ok(html) => HttpResponse::Ok().content_type("text/html; charset=utf-8").body(html),
        Err(e) => {
            tracing::error!(template, error = %e, "page failed to render");
            HttpResponse::InternalServerError().content_type("text/plain; charset=utf-8").body(format!("page failed to render: {e}"))
        }
    }
}

/// An error as a page, with the API's status code and message.
pub(crate) fn error_page(viewer: Option<&Viewer>, error: &ApiError) -> HttpResponse {
    use actix_web::ResponseError;
    let mut page = render("error.html", viewer, &serde_json::json!({"status": error.status_code().as_u16(), "message": error.to_string()}));
    *page.status_mut() = error.status_code();
    page
}

/// Who is looking at a page, and the CSRF token their forms carry (None with a bearer token).
pub struct Viewer {
    pub principal: Principal,
    pub csrf: Option<String>,
}

fn cookie(req: &HttpRequest, name: &str) -> Option<String> {
    let header = req.headers().get(header::COOKIE)?.to_str().ok()?;
    header.split(';').filter_map(|c| c.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v.to_owned())
}

fn bearer(req: &HttpRequest) -> Option<String> {
    let header = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    header.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
}

fn to_login(req: &HttpRequest) -> HttpResponse {
    let next = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/ui");
    let next: String = url_encode(next);
    HttpResponse::SeeOther().insert_header((header::LOCATION, format!("/ui/login?next={next}"))).finish()
}

pub(crate) fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The page's viewer (viewer role or higher), or the response to send instead: a redirect
/// to the login page, or 403 for a worker token.
pub(crate) async fn viewer(req: &HttpRequest, state: &AppState) -> Result<Viewer, HttpResponse> {
    let found = if let Some(token) = bearer(req) {
        store::tokens::find_by_hash(&state.db.read, &hash_token(&token), now_ms())
            .await
            .map(|p| p.map(|principal| Viewer { principal, csrf: None }))
    } else if let Some(session) = cookie(req, SESSION_COOKIE) {
        store::sessions::find(&state.db.read, &hash_token(&session), now_ms())
            .await
            .map(|s| s.map(|(principal, csrf)| Viewer { principal, csrf: Some(csrf) }))
    } else {
        Ok(None)
    };
    match found {
        Ok(Some(v)) => match v.principal.require(Role::Viewer) {
            Ok(()) => Ok(v),
            Err(e) => Err(error_page(None, &e)),
        },
        Ok(None) => Err(to_login(req)),
        Err(e) => Err(error_page(None, &e.into())),
    }
}

/// Checks a form's CSRF token against the session's (bearer-token requests carry none and
/// need none: a browser never sends a bearer header by itself).
pub(crate) fn check_csrf(viewer: &Viewer, sent: &str) -> Result<(), ApiError> {
    match &viewer.csrf {
        Some(expected) if expected.as_str() != sent => Err(ApiError::Forbidden {
            needed: Role::Viewer,
            have: viewer.principal.role,
            name: "a form without this session's CSRF token".into(),
        }),
        _ => Ok(()),
    }
}

/// Failed logins from one address are counted over this window.
const LOGIN_FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// `/`, `/ui` and `/ui/` (what the README and the demo print) lead to the experiments page.
fn to_experiments() -> HttpResponse {
    HttpResponse::SeeOther().insert_header((header::LOCATION, "/ui/experiments")).finish()
}

#[get("/")]
async fn index() -> HttpResponse {
    to_experiments()
}

#[get("/ui")]
async fn ui_root() -> HttpResponse {
    to_experiments()
}

#[get("/ui/")]
async fn ui_root_slash() -> HttpResponse {
    to_experiments()
}

#[derive(serde::Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Only local paths are followed after login.
/// Where to go after logging in: a dashboard path only (no other site, no control
/// characters that would break the redirect header), else the experiments page.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui") && !n.starts_with("//") && !n.chars().any(|c| c.is_control()) => n.to_owned(),
        _ => "/ui/experiments".to_owned(),
    }
}

#[get("/ui/login")]
async fn login_form(q: web::Query<NextQuery>) -> HttpResponse {
    render("login.html", None, &serde_json::json!({"next": safe_next(q.next.as_deref())}))
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

/// Whether a form POST comes from this site's own pages: a browser sends `Origin` (or at
/// least `Referer`) with a form; one from another site is refused (login CSRF). A request
/// with neither (a script) is let through: it cannot ride on a victim's browser.
fn same_origin(req: &HttpRequest) -> bool {
    let host = req.connection_info().host().to_owned();
    let from = |name: header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    match from(header::ORIGIN).or_else(|| from(header::REFERER)) {
        None => true,
        Some(origin) => {
            let rest = origin.split_once("://").map_or(origin.as_str(), |(_, rest)| rest);
            rest.split('/').next() == Some(host.as_str())
        }
    }
}

/// How long a login answer waits after `failures` recent failures from one address: none for
/// the first three, then 250 ms more each, up to 3 s (guessing tokens gets slow; a typo does not).
fn login_delay(failures: u32) -> std::time::Duration {
    std::time::Duration::from_millis(u64::from(failures.saturating_sub(3)).saturating_mul(250).min(3_000))
}

#[post("/ui/login")]
async fn login(req: HttpRequest, state: web::Data<AppState>, form: web::Form<LoginForm>) -> HttpResponse {
    if !same_origin(&req) {
        tracing::info!("a login form posted from another site was refused");
        let mut page =
            render("error.html", None, &serde_json::json!({"status": 403, "message": "This login form was sent from another site."}));
        *page.status_mut() = actix_web::http::StatusCode::FORBIDDEN;
        return page;
    }
    let address = req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
    let next = safe_next(form.next.as_deref());
    let token_hash = hash_token(form.token.trim());
    let principal = match store::tokens::find_by_hash(&state.db.read, &token_hash, now_ms()).await {
        Ok(p) => p,
        Err(e) => return error_page(None, &e.into()),
    };
    let Some(principal) = principal.filter(|p| p.role.allows(Role::Viewer)) else {
        let failures = state.login_failures.lock().map_or(0, |mut f| {
            let now = std::time::Instant::now();
            let entry = f.entry(address.clone()).or_insert((0, now));
            if now.duration_since(entry.1) > LOGIN_FAILURE_WINDOW {
                *entry = (0, now);
            }
            entry.0 += 1;
            entry.0
        });
        tracing::info!(from = %address, failures, "a dashboard login with an invalid token was refused");
        tokio::time::sleep(login_delay(failures)).await;
        let mut page = render(
            "login.html",
            None,
            &serde_json::json!({"next": next, "error": "That token is not valid for the dashboards (unknown, revoked, or a worker token)."}),
        );
        *page.status_mut() = actix_web::http::StatusCode::UNAUTHORIZED;
        return page;
    };
    let session = new_token();
    let csrf = new_token();
    let now = now_ms();
    if let Err(e) =
        store::sessions::insert(&state.db.write, &hash_token(&session), &token_hash, &csrf, now, now + SESSION_HOURS * 3_600_000).await
    {
        return error_page(None, &e.into());
    }
    if let Ok(mut f) = state.login_failures.lock() {
        f.remove(&address);
    }
    tracing::info!(token = %principal.name, "dashboard login");
    // Served over HTTPS (directly, or by a TLS proxy that says so in X-Forwarded-Proto or
    // Forwarded), the session cookie is never sent over plain HTTP.
    let secure = if req.connection_info().scheme() == "https" { "; Secure" } else { "" };
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, next))
        .insert_header((
            header::SET_COOKIE,
            format!("{SESSION_COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}", SESSION_HOURS * 3600),
        ))
        .finish()
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    csrf: String,
}

#[post("/ui/logout")]
async fn logout(req: HttpRequest, state: web::Data<AppState>, form: web::Form<CsrfForm>) -> HttpResponse {
    let v = match viewer(&req, &state).await {
        Ok(v) => v,
        Err(page) => return page,
    };
    if let Err(e) = check_csrf(&v, &form.csrf) {
        return error_page(Some(&v), &e);
    }
    if let Some(session) = cookie(&req, SESSION_COOKIE)
        && let Err(e) = store::sessions::delete(&state.db.write, &hash_token(&session)).await
    {
        return error_page(Some(&v), &e.into());
    }
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/ui/login"))
        .insert_header((header::SET_COOKIE, format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")))
        .finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn failed_logins_slow_down_after_three() {
        assert_eq!(super::login_delay(3).as_millis(), 0);
        assert_eq!(super::login_delay(5).as_millis(), 500);
        assert_eq!(super::login_delay(1_000).as_millis(), 3_000);
    }
}
