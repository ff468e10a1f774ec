//! Double opt-in: the confirmation message with a signed link, and the
//! confirm endpoint. GET shows a page with a button; only the POST records
//! consent, so link scanners that prefetch URLs never confirm anyone.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Html;
use axum::routing::get;
use broadside_auth::Caller;
use broadside_mail::token::{PURPOSE_CONFIRM, UnsubscribeClaims};
use broadside_proto::ServiceError;
use broadside_proto::v1::{ConfirmSubscriptionRequest, Subscriber};
use broadside_store::SubscriptionStatus;
use lettre::message::{Mailbox, MultiPart};

use broadside_mail::escape_html;

use crate::Confirmations;
use crate::events::{Position, subscription_changed, upserted};
use crate::{SubscriberApi, consent_of, mail_error, subscriber_to_proto};

impl Confirmations<'_> {
    fn confirm_url(&self, subscriber: &broadside_store::Subscriber, list_id: &str) -> String {
        let token = self.settings.signer.sign(&UnsubscribeClaims {
            purpose: PURPOSE_CONFIRM.into(),
            ..UnsubscribeClaims::new(&subscriber.tenant, &subscriber.id, list_id, "")
        });
        format!("{}/confirm/{token}", self.settings.public_url.trim_end_matches('/'))
    }

    /// Mails the confirmation link for `list_id`. A failure leaves the
    /// membership unconfirmed; calling CreateSubscriber again re-sends.
    pub(crate) async fn send_confirmation(
        &self,
        subscriber: &broadside_store::Subscriber,
        list_id: &str,
    ) -> Result<(), ServiceError> {
        let list_name = match self.store.get_list(&subscriber.tenant, list_id).await? {
            Some(list) => list.display_name,
            None => return Ok(()),
        };
        let url = self.confirm_url(subscriber, list_id);
        let text = format!(
            "Please confirm that you want to receive {list_name}:\n\n{url}\n\nIf you did not ask for this, ignore this message and nothing will be sent.\n"
        );
        let html = format!(
            "<p>Please confirm that you want to receive <b>{}</b>:</p><p><a href=\"{url}\">Confirm my subscription</a></p><p>If you did not ask for this, ignore this message and nothing will be sent.</p>",
            escape_html(&list_name)
        );
        let from: Mailbox = self.settings.confirm_from.parse().map_err(|error| {
            ServiceError::Internal(format!(
                "mail.confirm_from {:?} is not an address: {error}",
                self.settings.confirm_from
            ))
        })?;
        let to = Mailbox::new(
            (!subscriber.display_name.is_empty()).then(|| subscriber.display_name.clone()),
            broadside_mail::address::validate_address("email", &subscriber.email).map_err(mail_error)?,
        );
        let message = lettre::Message::builder()
            .from(from)
            .to(to)
            .subject(format!("Confirm your subscription to {list_name}"))
            .message_id(Some(format!(
                "<confirm.{list_id}.{}.{}@{}>",
                subscriber.id,
                uuid_suffix(),
                self.settings.domain
            )))
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|error| ServiceError::Internal(format!("building the confirmation message: {error}")))?;
        let message =
            broadside_mail::message::Outgoing::signed(&message, &self.settings.confirm_from, &self.settings.dkim)
                .map_err(|error| ServiceError::Internal(format!("signing the confirmation message: {error}")))?;
        match self.settings.transport.send(&message).await {
            Ok(_) => {
                tracing::info!(tenant = %subscriber.tenant, subscriber = %subscriber.id, list = %list_id, "confirmation sent");
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, subscriber = %subscriber.id, list = %list_id, "confirmation not sent");
                Err(ServiceError::Unavailable(format!(
                    "the subscriber was stored but the confirmation message could not be sent ({error}); call CreateSubscriber again to re-send it"
                )))
            }
        }
    }

    /// Confirms the membership a confirmation token names. `caller`, when
    /// given (gRPC), must belong to the token's tenant.
    pub async fn confirm_subscription(
        &self,
        caller: Option<&Caller>,
        request: ConfirmSubscriptionRequest,
    ) -> Result<(Subscriber, Position), ServiceError> {
        let claims = self
            .settings
            .signer
            .verify(request.token.trim())
            .map_err(|error| ServiceError::invalid("token", format!("not a valid confirmation link: {error}")))?;
        if claims.purpose != PURPOSE_CONFIRM || caller.is_some_and(|c| c.tenant != claims.tenant) {
            return Err(ServiceError::invalid("token", "not a confirmation token"));
        }
        let consent = consent_of(request.consent, "confirm_link");
        let stored = self
            .store
            .set_subscription(
                &claims.tenant,
                &claims.subscriber_id,
                &claims.list_id,
                SubscriptionStatus::Confirmed,
                consent.clone(),
            )
            .await?
            .ok_or_else(|| ServiceError::NotFound("the subscription of this link (it may have been erased)".into()))?;
        let position = self
            .publish(vec![
                (
                    stored.tenant.clone(),
                    stored.id.clone(),
                    subscription_changed(&claims.list_id, SubscriptionStatus::Confirmed, &consent.source),
                ),
                (stored.tenant.clone(), stored.id.clone(), upserted(&stored)),
            ])
            .await?;
        tracing::info!(tenant = %stored.tenant, subscriber = %stored.id, list = %claims.list_id, "subscription confirmed");
        Ok((subscriber_to_proto(&stored), position))
    }
}

fn uuid_suffix() -> String {
    broadside_store::new_id()
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title}</title></head><body style=\"font-family:sans-serif;max-width:36em;margin:3em auto\">\
         <h1>{title}</h1>{body}</body></html>"
    ))
}

async fn confirm_page(Path(token): Path<String>) -> Html<String> {
    let token = escape_html(&token);
    page(
        "Confirm your subscription",
        &format!(
            "<form method=\"post\" action=\"{token}\"><p>One more step: press the button to start receiving messages.</p>\
             <button id=\"confirm\" type=\"submit\">Confirm my subscription</button></form>"
        ),
    )
}

async fn confirm_post(
    State(api): State<SubscriberApi>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> (StatusCode, Html<String>) {
    if !broadside_auth::limits::allow_http(peer.ip()) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            page("Too many requests", "<p>Please wait a moment and try again.</p>"),
        );
    }
    let user_agent = headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let consent = broadside_proto::v1::ConsentContext {
        source: "confirm_link".into(),
        ip: broadside_auth::limits::client_ip(&headers, peer),
        user_agent,
    };
    let request = ConfirmSubscriptionRequest { token, consent: Some(consent) };
    match api.confirmations().confirm_subscription(None, request).await {
        Ok(_) => (StatusCode::OK, page("Subscription confirmed", "<p id=\"done\">Thank you, you are subscribed.</p>")),
        Err(error @ (ServiceError::InvalidArgument { .. } | ServiceError::NotFound(_))) => {
            tracing::info!(%error, "confirmation refused");
            (StatusCode::BAD_REQUEST, page("This link does not work", "<p>The link is invalid or no longer valid.</p>"))
        }
        Err(error) => {
            tracing::warn!(%error, "confirmation failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                page("Please try again", "<p>We could not record your confirmation right now.</p>"),
            )
        }
    }
}

/// The public HTTP routes of the subscribers role.
pub fn http_routes(api: SubscriberApi) -> Router {
    Router::new().route("/confirm/{token}", get(confirm_page).post(confirm_post)).with_state(api)
}
