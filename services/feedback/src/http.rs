//! Public HTTP for people and mail clients, all by HMAC-signed tokens:
//!
//! - `POST /u/{token}`: RFC 8058 one-click unsubscribe (no cookies, no
//!   session, idempotent), also the landing page's button;
//! - `GET /u/{token}`: the landing page with a preference center (per-list
//!   toggles), server-rendered, no JavaScript;
//! - `POST /u/{token}/preferences`: saves the toggles;
//! - `GET /o/{token}`: the open pixel; `GET /c/{token}`: the click redirect,
//!   only ever to the URL signed into the token.
//!
//! GET never changes a subscription: mail scanners prefetch every link.
//! Each answer is given once the event is durable on the bus.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use broadside_mail::escape_html;
use broadside_mail::token::{PURPOSE_CLICK, PURPOSE_OPEN, UnsubscribeClaims};
use broadside_proto::v1::{self, feedback_event::Kind as EventKind};
use broadside_store::SubscriptionStatus;

use crate::Feedback;
use crate::policy::Attribution;

/// The routes, with security headers on every answer.
pub fn routes(feedback: Feedback) -> Router {
    Router::new()
        .route("/u/{token}", get(landing).post(one_click))
        .route("/u/{token}/preferences", post(preferences))
        .route("/o/{token}", get(open_pixel))
        .route("/c/{token}", get(click))
        .with_state(feedback)
}

/// A 1×1 transparent GIF.
const PIXEL: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";

struct Visitor {
    ip: String,
    user_agent: String,
}

fn visitor(headers: &HeaderMap, peer: SocketAddr) -> Visitor {
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    Visitor { ip: broadside_auth::limits::client_ip(headers, peer), user_agent: user_agent.chars().take(512).collect() }
}

/// The claims of an unsubscribe token (purpose empty), or why not.
fn unsubscribe_claims(feedback: &Feedback, token: &str) -> Option<UnsubscribeClaims<'static>> {
    match feedback.settings.signer.verify(token) {
        Ok(claims) if claims.purpose.is_empty() => Some(claims),
        Ok(_) => None,
        Err(error) => {
            tracing::info!(%error, "refused an unsubscribe token");
            None
        }
    }
}

/// Publishes the unsubscribe and records the action.
async fn unsubscribe(
    feedback: &Feedback,
    claims: &UnsubscribeClaims<'_>,
    list_id: &str,
    source: &str,
    visitor: &Visitor,
) -> Result<(), crate::policy::FeedbackError> {
    let who = attribution(claims);
    let event = v1::Unsubscribe {
        list_id: list_id.to_owned(),
        source: source.into(),
        ip: visitor.ip.clone(),
        user_agent: visitor.user_agent.clone(),
    };
    feedback.publish(&who, EventKind::Unsubscribe(event)).await?;
    feedback.record_action(Some(&who), "unsubscribe", source, "unsubscribed").await?;
    Ok(())
}

fn attribution(claims: &UnsubscribeClaims<'_>) -> Attribution {
    Attribution::from(claims.clone())
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><meta name=\"robots\" content=\"noindex\">\
         <title>{title}</title><style>{STYLE}</style></head><body><main><h1>{title}</h1>{body}</main></body></html>"
    );
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    response
}

const STYLE: &str = "body{margin:0;background:#f4f5f7;color:#1d2433;font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}\
main{max-width:34rem;margin:3rem auto;background:#fff;border-radius:12px;padding:2rem 2.25rem;box-shadow:0 1px 3px rgba(0,0,0,.12)}\
h1{font-size:1.5rem;margin:0 0 1rem}h2{font-size:1.1rem;margin:2rem 0 .5rem}p{margin:.5rem 0}\
.muted{color:#5b6473;font-size:.95rem}fieldset{border:1px solid #d8dce3;border-radius:8px;padding:.75rem 1rem;margin:0 0 1rem}\
legend{padding:0 .25rem;font-weight:600}label{display:flex;gap:.6rem;align-items:center;padding:.35rem 0;cursor:pointer}\
input[type=checkbox]{width:1.15rem;height:1.15rem}button{font:inherit;border:0;border-radius:8px;padding:.65rem 1.2rem;cursor:pointer}\
.primary{background:#c62828;color:#fff}.secondary{background:#e8ebf0;color:#1d2433}button:focus{outline:3px solid #1a73e8;outline-offset:2px}\
.actions{display:flex;gap:.75rem;flex-wrap:wrap}.done{background:#e8f5e9;border-radius:8px;padding:.75rem 1rem}";

fn invalid_link() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "This link does not work",
        "<p>The link is incomplete or was changed. Use the unsubscribe link of a recent message, or reply to it to ask to be removed.</p>",
    )
}

fn unavailable() -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Please try again",
        "<p>We could not record your request right now. Nothing was changed; please try again in a minute.</p>",
    )
}

/// `j•••@example.com`: enough for a person to recognise the address, not to harvest it.
fn masked(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => format!("{}•••@{domain}", local.chars().next().unwrap_or('•')),
        None => "•••".into(),
    }
}

async fn list_name(feedback: &Feedback, tenant: &str, list_id: &str) -> String {
    match feedback.store.get_list(tenant, list_id).await {
        Ok(Some(list)) if !list.display_name.is_empty() => list.display_name,
        _ => list_id.to_owned(),
    }
}

async fn landing(State(feedback): State<Feedback>, Path(token): Path<String>) -> Response {
    let Some(claims) = unsubscribe_claims(&feedback, &token) else { return invalid_link() };
    let subscriber = match feedback.store.get_subscriber(&claims.tenant, &claims.subscriber_id).await {
        Ok(Some(subscriber)) => subscriber,
        Ok(None) => {
            return page(
                StatusCode::OK,
                "You are not on our lists",
                "<p>We hold no subscription for this link any more: you will not receive further messages.</p>",
            );
        }
        Err(error) => {
            tracing::warn!(%error, "landing page: store read failed");
            return unavailable();
        }
    };
    let token_html = escape_html(&token);
    let this_list = escape_html(&list_name(&feedback, &claims.tenant, &claims.list_id).await);
    let mut toggles = String::new();
    for subscription in &subscriber.subscriptions {
        let name = escape_html(&list_name(&feedback, &claims.tenant, &subscription.list_id).await);
        let id = escape_html(&subscription.list_id);
        let (checked, disabled, note) = match subscription.status {
            SubscriptionStatus::Unsubscribed => ("", " disabled", " <span class=\"muted\">(unsubscribed)</span>"),
            _ => (" checked", "", ""),
        };
        toggles.push_str(&format!(
            "<label><input type=\"checkbox\" name=\"list\" value=\"{id}\" id=\"list-{id}\"{checked}{disabled}> {name}{note}</label>"
        ));
    }
    let body = format!(
        "<p>Messages to <strong>{email}</strong>.</p>\
         <form method=\"post\" action=\"/u/{token_html}\"><input type=\"hidden\" name=\"source\" value=\"landing_page\">\
         <p>Stop receiving <strong>{this_list}</strong>?</p>\
         <div class=\"actions\"><button class=\"primary\" id=\"unsubscribe\" type=\"submit\">Unsubscribe from {this_list}</button></div></form>\
         <h2 id=\"preferences\">Your subscriptions</h2><form method=\"post\" action=\"/u/{token_html}/preferences\">\
         <fieldset><legend>Keep receiving</legend>{toggles}</fieldset>\
         <div class=\"actions\"><button class=\"secondary\" id=\"save\" type=\"submit\">Save preferences</button>\
         <button class=\"secondary\" id=\"unsubscribe-all\" type=\"submit\" name=\"all\" value=\"1\">Unsubscribe from everything</button></div></form>\
         <p class=\"muted\">Nothing changes until you press a button.</p>",
        email = escape_html(&masked(&subscriber.email)),
    );
    page(StatusCode::OK, "Manage your subscription", &body)
}

/// RFC 8058: a POST with `List-Unsubscribe=One-Click` (or the landing page's form).
async fn one_click(
    State(feedback): State<Feedback>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let Some(claims) = unsubscribe_claims(&feedback, &token) else { return invalid_link() };
    let from_page = url::form_urlencoded::parse(&body).any(|(key, value)| key == "source" && value == "landing_page");
    let source = if from_page { "landing_page" } else { "one_click" };
    match unsubscribe(&feedback, &claims, &claims.list_id, source, &visitor(&headers, peer)).await {
        Ok(()) => {
            let list = escape_html(&list_name(&feedback, &claims.tenant, &claims.list_id).await);
            page(
                StatusCode::OK,
                "You are unsubscribed",
                &format!("<p class=\"done\" id=\"done\">You will no longer receive <strong>{list}</strong>.</p>"),
            )
        }
        Err(error) => {
            tracing::warn!(%error, "unsubscribe not recorded");
            unavailable()
        }
    }
}

async fn preferences(
    State(feedback): State<Feedback>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let Some(claims) = unsubscribe_claims(&feedback, &token) else { return invalid_link() };
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let everything = form.iter().any(|(key, value)| key == "all" && value == "1");
    let keep: Vec<&str> = form.iter().filter(|(key, _)| key == "list").map(|(_, value)| value.as_str()).collect();
    let subscriber = match feedback.store.get_subscriber(&claims.tenant, &claims.subscriber_id).await {
        Ok(Some(subscriber)) => subscriber,
        Ok(None) => return page(StatusCode::OK, "You are not on our lists", "<p>Nothing to change.</p>"),
        Err(_) => return unavailable(),
    };
    let visitor = visitor(&headers, peer);
    let leaving: Vec<String> = subscriber
        .subscriptions
        .iter()
        .filter(|s| s.status != SubscriptionStatus::Unsubscribed)
        .filter(|s| everything || !keep.contains(&s.list_id.as_str()))
        .map(|s| s.list_id.clone())
        .collect();
    let mut names = Vec::new();
    for list_id in &leaving {
        if let Err(error) = unsubscribe(&feedback, &claims, list_id, "preference_center", &visitor).await {
            tracing::warn!(%error, "preference change not recorded");
            return unavailable();
        }
        names.push(format!("<li>{}</li>", escape_html(&list_name(&feedback, &claims.tenant, list_id).await)));
    }
    let body = if names.is_empty() {
        "<p class=\"done\" id=\"done\">Your preferences are saved. Nothing changed.</p>".to_owned()
    } else {
        format!(
            "<p class=\"done\" id=\"done\">Your preferences are saved. You will no longer receive:</p><ul>{}</ul>",
            names.concat()
        )
    };
    page(StatusCode::OK, "Preferences saved", &body)
}

async fn open_pixel(State(feedback): State<Feedback>, headers: HeaderMap, Path(token): Path<String>) -> Response {
    if let Ok(claims) = feedback.settings.signer.verify(&token)
        && claims.purpose == PURPOSE_OPEN
    {
        let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let open = v1::Open { user_agent: user_agent.chars().take(256).collect() };
        if let Err(error) = feedback.publish(&attribution(&claims), EventKind::Open(open)).await {
            tracing::warn!(%error, "open not recorded");
        }
    }
    // The pixel is served either way: a broken image helps nobody.
    let mut response = (StatusCode::OK, PIXEL).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("image/gif"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store, private"));
    response
}

async fn click(State(feedback): State<Feedback>, Path(token): Path<String>) -> Response {
    let claims = match feedback.settings.signer.verify(&token) {
        Ok(claims) if claims.purpose == PURPOSE_CLICK => claims,
        _ => return invalid_link(),
    };
    let Ok(target) = url::Url::parse(&claims.url) else { return invalid_link() };
    if !matches!(target.scheme(), "http" | "https") {
        return invalid_link();
    }
    let click = v1::Click { url: claims.url.clone().into_owned() };
    if let Err(error) = feedback.publish(&attribution(&claims), EventKind::Click(click)).await {
        tracing::warn!(%error, "click not recorded");
    }
    Redirect::to(target.as_str()).into_response()
}
