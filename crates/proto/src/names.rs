//! AIP-122 resource names: `collection/id`.

use crate::ServiceError;

/// Extracts the id from `name`, which must look like `{collection}/{id}`.
/// `field` names the request field in the error.
pub fn parse<'a>(field: &str, name: &'a str, collection: &str) -> Result<&'a str, ServiceError> {
    match name.split_once('/') {
        Some((prefix, id)) if prefix == collection && !id.is_empty() && !id.contains('/') => Ok(id),
        _ if name.is_empty() => Err(ServiceError::invalid(field, format!("is required (format: {collection}/ID)"))),
        _ => Err(ServiceError::invalid(field, format!("{name:?} is not a {collection}/ID name"))),
    }
}

/// Formats `{collection}/{id}`.
pub fn format(collection: &str, id: &str) -> String {
    format!("{collection}/{id}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_and_rejects() {
        assert_eq!(super::parse("name", "lists/abc", "lists").unwrap(), "abc");
        assert!(super::parse("name", "campaigns/abc", "lists").is_err());
        assert!(super::parse("name", "lists/", "lists").is_err());
        assert!(super::parse("name", "", "lists").unwrap_err().to_string().starts_with("name:"));
    }
}
