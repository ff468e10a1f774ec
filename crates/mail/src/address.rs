//! Input checks for anything that becomes an address or a header.

use std::str::FromStr;

use crate::MailError;

/// RFC 5321 §4.5.3.1 limits.
const MAX_LOCAL_PART: usize = 64;
const MAX_DOMAIN: usize = 255;
const MAX_PATH: usize = 254;

/// Checks an address for RFC 5321 syntax and length limits.
pub fn validate_address(field: &str, email: &str) -> Result<lettre::Address, MailError> {
    check_header_value(field, email)?;
    if email.is_empty() {
        return Err(MailError::invalid(field, "is required"));
    }
    if email.len() > MAX_PATH {
        return Err(MailError::invalid(
            field,
            format!("address is {} characters, the limit is {MAX_PATH}", email.len()),
        ));
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err(MailError::invalid(field, format!("{email:?} has no '@'")));
    };
    if local.is_empty() || local.len() > MAX_LOCAL_PART {
        return Err(MailError::invalid(field, format!("local part must be 1 to {MAX_LOCAL_PART} characters")));
    }
    if domain.is_empty() || domain.len() > MAX_DOMAIN || domain.split('.').any(|label| label.len() > 63) {
        return Err(MailError::invalid(field, "domain is empty or too long (labels at most 63 characters)"));
    }
    lettre::Address::from_str(email)
        .map_err(|error| MailError::invalid(field, format!("{email:?} is not a valid address: {error}")))
}

/// Normalizes and validates an address: trims it, lowercases the domain and
/// converts an internationalized domain to punycode (IDNA/UTS 46), keeps the
/// local part as given (RFC 5321 says only the receiving host may interpret
/// it), then checks RFC 5321 syntax and lengths. Errors say why.
pub fn normalize_address(field: &str, email: &str) -> Result<String, MailError> {
    check_header_value(field, email)?;
    let email = email.trim();
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err(MailError::invalid(field, format!("{email:?} has no '@'")));
    };
    if !local.is_ascii() {
        return Err(MailError::invalid(
            field,
            format!(
                "{email:?} has a non-ASCII local part, which needs SMTPUTF8 (RFC 6531); Broadside sends ASCII addresses only"
            ),
        ));
    }
    let domain = idna::domain_to_ascii(domain).map_err(|_| {
        MailError::invalid(field, format!("{email:?} has a domain that is not a valid (international) domain name"))
    })?;
    if !domain.contains('.') {
        return Err(MailError::invalid(field, format!("{email:?} needs a fully qualified domain (like example.com)")));
    }
    let normalized = format!("{local}@{domain}");
    validate_address(field, &normalized)?;
    Ok(normalized)
}

/// Rejects CR, LF and NUL in any value that becomes part of a header, so no
/// input can add a header or end the message early.
pub fn check_header_value(field: &str, value: &str) -> Result<(), MailError> {
    if let Some(bad) = value.chars().find(|c| matches!(c, '\r' | '\n' | '\0')) {
        return Err(MailError::invalid(field, format!("must not contain {:?}", bad)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_addresses() {
        assert!(validate_address("email", "ada@example.com").is_ok());
        assert!(validate_address("email", "first.last+tag@sub.example.org").is_ok());
    }

    #[test]
    fn rejects_bad_syntax_and_long_parts_naming_the_field() {
        for bad in ["", "no-at-sign", "@example.com", "a@", "a b@example.com", "a@exa mple.com"] {
            let error = validate_address("subscriber.email", bad).unwrap_err();
            assert_eq!(error.field(), Some("subscriber.email"), "{bad}");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(validate_address("email", &long_local).unwrap_err().to_string().contains("local part"));
        let long_label = format!("a@{}.com", "b".repeat(64));
        assert!(validate_address("email", &long_label).is_err());
        let long_total = format!("a@{}.com", vec!["c".repeat(60); 5].join("."));
        assert!(validate_address("email", &long_total).is_err());
    }

    #[test]
    fn normalizes_domains_to_lowercase_punycode_and_keeps_the_local_part() {
        assert_eq!(normalize_address("email", " Ada.L@Example.COM ").unwrap(), "Ada.L@example.com");
        assert_eq!(normalize_address("email", "ada@Bücher.Example").unwrap(), "ada@xn--bcher-kva.example");
        let non_ascii = normalize_address("email", "jörg@example.com").unwrap_err();
        assert!(non_ascii.to_string().contains("SMTPUTF8"), "{non_ascii}");
        assert!(normalize_address("email", "ada@localhost").unwrap_err().to_string().contains("fully qualified"));
        assert!(normalize_address("email", "ada@exa_mple..com").is_err());
    }

    #[test]
    fn rejects_header_injection() {
        assert!(check_header_value("display_name", "Ada\r\nBcc: x@y").is_err());
        assert!(check_header_value("display_name", "Ada\n").is_err());
        assert!(check_header_value("display_name", "Ada\0").is_err());
        assert!(validate_address("email", "a@example.com\r\nBcc: x@y.z").is_err());
        assert!(check_header_value("display_name", "Ada Lovelace").is_ok());
    }
}
