//! The reference: each rule evaluated row by row, the obvious way. The
//! property test checks the projection against it.

use serde_json::Value as Json;

use super::Row;
use crate::rule::{Activity, Field, Measure, Op, Rule, Value};

/// An engagement event as the naive evaluator sees it.
#[derive(Debug, Clone)]
pub(super) struct NaiveEvent {
    pub subscriber: String,
    pub activity: Activity,
    pub campaign: String,
    pub time_ms: i64,
}

/// A behavioral event as the naive evaluator sees it.
#[derive(Debug, Clone)]
pub(crate) struct NaiveBehavior {
    pub subscriber: String,
    pub name: String,
    /// Whole seconds, in ms (the projection keeps seconds).
    pub time_ms: i64,
    pub properties: serde_json::Map<String, Json>,
}

pub(super) fn matches(rule: &Rule, row: &Row, events: &[NaiveEvent], behaviors: &[NaiveBehavior], now_ms: i64) -> bool {
    match rule {
        Rule::All(rules) => rules.iter().all(|r| matches(r, row, events, behaviors, now_ms)),
        Rule::Any(rules) => rules.iter().any(|r| matches(r, row, events, behaviors, now_ms)),
        Rule::Not(rule) => !matches(rule, row, events, behaviors, now_ms),
        Rule::Behavior(b) => {
            let since = b.within.map(|w| now_ms / 1000 - w);
            let matching = behaviors
                .iter()
                .filter(|e| e.subscriber == row.id && e.name == b.event)
                .filter(|e| since.is_none_or(|s| e.time_ms / 1000 >= s))
                .filter(|e| b.filter.iter().all(|t| t.test.holds(e.properties.get(&t.property))));
            match &b.measure {
                Measure::Count(op, n) => op.holds(&(matching.count() as u32), n),
                Measure::Sum { property, op, value } => {
                    let sum: f64 = matching.filter_map(|e| e.properties.get(property).and_then(Json::as_f64)).sum();
                    op.holds(&sum, value)
                }
                Measure::Last { op, value } => {
                    let bound = match value {
                        Value::Ago(s) => now_ms - s * 1000,
                        Value::At(ms) => *ms,
                        _ => return false,
                    };
                    matching.map(|e| e.time_ms / 1000 * 1000).max().is_some_and(|last| op.holds(&last, &bound))
                }
            }
        }
        Rule::Compare { field, op: Op::Ne, value } => !equal_or_ordered(field, Op::Eq, value, row, now_ms),
        Rule::Compare { field, op, value } => equal_or_ordered(field, *op, value, row, now_ms),
        Rule::In { field, values } => values.iter().any(|v| equal_or_ordered(field, Op::Eq, v, row, now_ms)),
        Rule::Contains { field, text } => {
            text_of(field, row).is_some_and(|s| s.to_lowercase().contains(&text.to_lowercase()))
        }
        Rule::StartsWith { field, text } => {
            text_of(field, row).is_some_and(|s| s.to_lowercase().starts_with(&text.to_lowercase()))
        }
        Rule::Exists { field } => match field {
            Field::Email => !row.email.is_empty(),
            Field::DisplayName => !row.display_name.is_empty(),
            Field::Status | Field::CreatedAt => true,
            Field::Attribute(key) => row.attributes.contains_key(key),
        },
        Rule::InList(list) => row.subscriptions.iter().any(|(l, s)| l == list && s == "confirmed"),
        Rule::Engaged(e) => {
            let since = e.within.map(|w| now_ms / 1000 - w);
            let count = events
                .iter()
                .filter(|ev| ev.subscriber == row.id && ev.activity == e.activity)
                .filter(|ev| e.campaign.as_ref().is_none_or(|c| *c == ev.campaign))
                .filter(|ev| since.is_none_or(|s| ev.time_ms / 1000 >= s))
                .count() as u32;
            e.count.0.holds(&count, &e.count.1)
        }
    }
}

fn text_of(field: &Field, row: &Row) -> Option<String> {
    match field {
        Field::Email => Some(row.email.to_lowercase()),
        Field::DisplayName => Some(row.display_name.clone()),
        Field::Status => Some(row.status.clone()),
        Field::CreatedAt => None,
        Field::Attribute(key) => row.attributes.get(key).and_then(Json::as_str).map(str::to_owned),
    }
}

fn equal_or_ordered(field: &Field, op: Op, value: &Value, row: &Row, now_ms: i64) -> bool {
    match (field, value) {
        (Field::Status, Value::Text(text)) => op == Op::Eq && row.status == *text,
        (Field::CreatedAt, Value::Ago(s)) => op.holds(&row.created_at, &(now_ms - s * 1000)),
        (Field::CreatedAt, Value::At(ms)) => op.holds(&row.created_at, ms),
        (Field::Email, Value::Text(text)) => op.holds(&row.email.to_lowercase(), &text.to_lowercase()),
        (Field::DisplayName, Value::Text(text)) => op.holds(&row.display_name, text),
        (Field::Attribute(key), value) => match (row.attributes.get(key), value) {
            (Some(Json::Number(n)), Value::Number(v)) => n.as_f64().is_some_and(|n| op.holds(&n, v)),
            (Some(Json::String(s)), Value::Text(v)) => op.holds(s, v),
            (Some(Json::Bool(b)), Value::Bool(v)) => op == Op::Eq && b == v,
            _ => false,
        },
        _ => false,
    }
}
