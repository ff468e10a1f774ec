//! Conversions between protobuf well-known types and plain Rust values.

use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};
use serde_json::{Map, Number, Value as Json};

/// Converts a protobuf `Struct` into a JSON object.
pub fn struct_to_json(value: &Struct) -> Map<String, Json> {
    value.fields.iter().map(|(key, value)| (key.clone(), value_to_json(value))).collect()
}

fn value_to_json(value: &Value) -> Json {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => number_to_json(*n),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(list)) => Json::Array(list.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => Json::Object(struct_to_json(s)),
    }
}

/// Whole numbers stay integers so templates print `42`, not `42.0`.
fn number_to_json(n: f64) -> Json {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Json::Number(Number::from(n as i64))
    } else {
        Number::from_f64(n).map(Json::Number).unwrap_or(Json::Null)
    }
}

/// Converts a JSON object into a protobuf `Struct`.
pub fn json_to_struct(map: &Map<String, Json>) -> Struct {
    Struct { fields: map.iter().map(|(key, value)| (key.clone(), json_to_value(value))).collect() }
}

fn json_to_value(value: &Json) -> Value {
    let kind = match value {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue { values: items.iter().map(json_to_value).collect() }),
        Json::Object(map) => Kind::StructValue(json_to_struct(map)),
    };
    Value { kind: Some(kind) }
}

/// Milliseconds since the Unix epoch to a protobuf `Timestamp`; 0 means unset.
pub fn millis_to_timestamp(millis: i64) -> Option<Timestamp> {
    (millis != 0)
        .then(|| Timestamp { seconds: millis.div_euclid(1000), nanos: (millis.rem_euclid(1000) * 1_000_000) as i32 })
}

/// A protobuf `Timestamp` to milliseconds since the Unix epoch.
pub fn timestamp_to_millis(timestamp: &Timestamp) -> i64 {
    timestamp.seconds * 1000 + i64::from(timestamp.nanos) / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_struct_round_trip_keeps_types() {
        let json: Map<String, Json> = serde_json::from_str(
            r#"{"city":"Lyon","age":42,"score":1.5,"vip":true,"tags":["a",1],"none":null,"nested":{"k":"v"}}"#,
        )
        .unwrap();
        assert_eq!(struct_to_json(&json_to_struct(&json)), json);
    }

    #[test]
    fn timestamps_round_trip_and_zero_is_unset() {
        assert_eq!(millis_to_timestamp(0), None);
        let ts = millis_to_timestamp(1_700_000_000_123).unwrap();
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_000_000));
        assert_eq!(timestamp_to_millis(&ts), 1_700_000_000_123);
    }
}
