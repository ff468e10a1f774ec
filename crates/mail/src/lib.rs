//! Everything about one message: validating addresses and header values,
//! rendering templates in a sandbox, signing tokens, building RFC 5322
//! messages, and handing them to a transport (SMTP relay or capture folder).

pub mod address;
pub mod message;
pub mod template;
pub mod token;
pub mod transport;

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
}

impl MailError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), message: message.into() }
    }

    /// The request field at fault, if the error is about input.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } | Self::Template { field, .. } => Some(field),
            _ => None,
        }
    }
}
