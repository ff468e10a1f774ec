//! Everything about one message: validating addresses and header values,
//! rendering templates in a sandbox, signing tokens and VERP return paths,
//! building RFC 5322 messages, DKIM-signing them, and handing them to a
//! transport (SMTP relay or capture folder).

pub mod address;
pub mod dkim;
pub mod message;
pub mod template;
pub mod token;
pub mod tracking;
pub mod transport;
pub mod verp;

/// What the roles that mail (subscribers' confirmations, the sender) share,
/// opened once per process from the config: the transport, the link and
/// VERP signer, and the DKIM keys.
#[derive(Clone)]
pub struct MailKit {
    pub transport: transport::Transport,
    pub signer: token::TokenSigner,
    pub dkim: std::sync::Arc<dkim::DkimKeys>,
}

/// A mail-side failure, naming the field at fault where there is one.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// Bad input: `field` names what to fix.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("template {field}: {message}")]
    Template { field: String, message: String },
    #[error("token: {0}")]
    Token(String),
    #[error("building message: {0}")]
    Build(String),
    /// Building or signing failed in a library doing `what`; the cause is
    /// kept as the error's source.
    #[error("building message: {what}")]
    Failed {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl MailError {
    /// `what` failed because of `source`.
    pub fn failed(what: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Failed { what: what.into(), source: source.into() }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), message: message.into() }
    }

    /// The message without the field name.
    pub fn message(&self) -> String {
        match self {
            Self::Invalid { message, .. } | Self::Template { message, .. } => message.clone(),
            other => broadside_proto::error_chain(other),
        }
    }

    /// Converts to the API error, keeping the field name (prefixed with `parent`).
    pub fn into_service_error(self, parent: &str) -> broadside_proto::ServiceError {
        match self.field() {
            Some(field) if parent.is_empty() => broadside_proto::ServiceError::invalid(field, self.message()),
            Some(field) => broadside_proto::ServiceError::invalid(format!("{parent}.{field}"), self.message()),
            None => broadside_proto::ServiceError::invalid(parent, broadside_proto::error_chain(&self)),
        }
    }

    /// The request field at fault, if the error is about input.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } | Self::Template { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// HTML escaping as minijinja's auto-escape does it (also `/`), for pages
/// we build and for finding a value in an auto-escaped HTML part.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            '/' => out.push_str("&#x2f;"),
            c => out.push(c),
        }
    }
    out
}
