//! Checks on subscriber input: attribute keys, types and sizes.

use broadside_proto::ServiceError;
use serde_json::{Map, Value};

/// At most this many attributes per subscriber.
pub(crate) const MAX_ATTRIBUTES: usize = 64;
/// At most this many bytes of attributes (as JSON) per subscriber.
pub(crate) const MAX_ATTRIBUTE_BYTES: usize = 16 * 1024;
/// At most this many items in a string-list attribute.
const MAX_LIST_ITEMS: usize = 100;
pub(crate) const MAX_DISPLAY_NAME: usize = 200;

/// The type of an attribute column in an import header (`age:number`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttributeType {
    String,
    Number,
    Bool,
    Timestamp,
    List,
}

impl AttributeType {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "" | "string" => Self::String,
            "number" => Self::Number,
            "bool" => Self::Bool,
            "timestamp" => Self::Timestamp,
            "list" => Self::List,
            _ => return None,
        })
    }

    /// Converts one CSV cell; lists are `|`-separated.
    pub(crate) fn convert(self, cell: &str) -> Result<Value, String> {
        let cell = cell.trim();
        Ok(match self {
            Self::String => Value::String(cell.to_owned()),
            Self::Number => {
                let number: f64 = cell.parse().map_err(|_| format!("{cell:?} is not a number"))?;
                serde_json::Number::from_f64(number)
                    .map(Value::Number)
                    .ok_or_else(|| format!("{cell:?} is not a finite number"))?
            }
            Self::Bool => match cell.to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => Value::Bool(true),
                "false" | "no" | "0" => Value::Bool(false),
                _ => return Err(format!("{cell:?} is not a boolean (true/false, yes/no, 1/0)")),
            },
            Self::Timestamp => Value::String(normalize_timestamp(cell)?),
            Self::List => Value::Array(
                cell.split('|').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.into())).collect(),
            ),
        })
    }
}

/// RFC 3339 timestamps, normalized to UTC (`2026-01-02T03:04:05Z`).
fn normalize_timestamp(text: &str) -> Result<String, String> {
    let parsed: prost_types::Timestamp =
        text.parse().map_err(|_| format!("{text:?} is not an RFC 3339 timestamp (like 2026-01-31T12:00:00Z)"))?;
    Ok(parsed.to_string())
}

/// Whether `key` may name an attribute: `[A-Za-z_][A-Za-z0-9_]{0,63}`, so it
/// works as a template variable and a segment field.
pub(crate) fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && key.len() <= 64
}

/// Checks attribute keys, value types (string, number, bool, list of
/// strings; timestamps are strings) and the size caps.
pub(crate) fn check_attributes(field: &str, attributes: &Map<String, Value>) -> Result<(), ServiceError> {
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(ServiceError::invalid(
            field,
            format!("has {} attributes, the limit is {MAX_ATTRIBUTES}", attributes.len()),
        ));
    }
    for (key, value) in attributes {
        if !valid_key(key) {
            return Err(ServiceError::invalid(
                format!("{field}.{key}"),
                "attribute names are letters, digits and '_', start with a letter or '_', at most 64 characters",
            ));
        }
        let ok = match value {
            Value::String(_) | Value::Bool(_) => true,
            Value::Number(n) => n.as_f64().is_some_and(f64::is_finite),
            Value::Array(items) => items.len() <= MAX_LIST_ITEMS && items.iter().all(Value::is_string),
            Value::Null | Value::Object(_) => false,
        };
        if !ok {
            return Err(ServiceError::invalid(
                format!("{field}.{key}"),
                format!("must be a string, number, boolean or a list of at most {MAX_LIST_ITEMS} strings"),
            ));
        }
    }
    let size = json_size(attributes);
    if size > MAX_ATTRIBUTE_BYTES {
        return Err(ServiceError::invalid(
            field,
            format!("attributes take {size} bytes as JSON, the limit is {MAX_ATTRIBUTE_BYTES}"),
        ));
    }
    Ok(())
}

/// Bytes of `value` as JSON, counted without building the string.
fn json_size(value: &impl serde::Serialize) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// Checks a display name: no CR/LF/NUL, at most [`MAX_DISPLAY_NAME`] characters.
pub(crate) fn check_display_name(field: &str, name: &str) -> Result<(), ServiceError> {
    broadside_mail::address::check_header_value(field, name).map_err(|e| e.into_service_error(""))?;
    if name.chars().count() > MAX_DISPLAY_NAME {
        return Err(ServiceError::invalid(field, format!("is longer than {MAX_DISPLAY_NAME} characters")));
    }
    Ok(())
}

/// Normalizes an address (domain lowercased, IDN to punycode) or says why it is invalid.
pub(crate) fn normalize_email(field: &str, email: &str) -> Result<String, ServiceError> {
    broadside_mail::address::normalize_address(field, email).map_err(|e| e.into_service_error(""))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn typed_cells_convert_or_say_why_not() {
        assert_eq!(AttributeType::Number.convert(" 42.5 ").unwrap(), json!(42.5));
        assert_eq!(AttributeType::Bool.convert("Yes").unwrap(), json!(true));
        assert_eq!(AttributeType::List.convert("a| b ||c").unwrap(), json!(["a", "b", "c"]));
        assert_eq!(
            AttributeType::Timestamp.convert("2026-01-02T03:04:05+01:00").unwrap(),
            json!("2026-01-02T02:04:05Z")
        );
        assert!(AttributeType::Number.convert("NaN").is_err());
        assert!(AttributeType::Bool.convert("maybe").unwrap_err().contains("maybe"));
        assert!(AttributeType::Timestamp.convert("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn attributes_are_typed_and_capped() {
        let ok = json!({"plan": "pro", "age": 3, "vip": true, "tags": ["a", "b"]});
        check_attributes("a", ok.as_object().unwrap()).unwrap();
        for bad in [json!({"x": null}), json!({"x": {"nested": 1}}), json!({"x": [1]}), json!({"bad key": 1})] {
            let error = check_attributes("subscriber.attributes", bad.as_object().unwrap()).unwrap_err();
            assert!(error.to_string().starts_with("subscriber.attributes."), "{error}");
        }
        let big = json!({"x": "y".repeat(MAX_ATTRIBUTE_BYTES)});
        assert!(check_attributes("a", big.as_object().unwrap()).unwrap_err().to_string().contains("bytes"));
    }
}
