//! The rule tree as protobuf (`broadside.v1.SegmentRule`), both ways.
//! Tree errors name the path of the bad node, e.g. `tree.all.rules[2].comparison.op`.

use broadside_proto::v1::{
    RuleBehavior, RuleComparison, RuleEngagement, RuleGroup, RuleValue, SegmentRule, rule_value, segment_rule::Node,
};

use super::{Activity, Behavior, Engagement, Field, Measure, Op, PropertyTest, Rule, Test, Value};

/// A bad tree: the field path at fault and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeError {
    pub path: String,
    pub message: String,
}

fn bad(path: &str, message: impl Into<String>) -> TreeError {
    TreeError { path: path.to_owned(), message: message.into() }
}

pub fn to_proto(rule: &Rule) -> SegmentRule {
    let node = match rule {
        Rule::All(rules) => Node::All(RuleGroup { rules: rules.iter().map(to_proto).collect() }),
        Rule::Any(rules) => Node::Any(RuleGroup { rules: rules.iter().map(to_proto).collect() }),
        Rule::Not(rule) => Node::Not(Box::new(to_proto(rule))),
        Rule::Compare { field, op, value } => comparison(field, op.as_str(), std::slice::from_ref(value)),
        Rule::In { field, values } => comparison(field, "in", values),
        Rule::Contains { field, text } => comparison(field, "contains", &[Value::Text(text.clone())]),
        Rule::StartsWith { field, text } => comparison(field, "starts_with", &[Value::Text(text.clone())]),
        Rule::Exists { field } => comparison(field, "exists", &[]),
        Rule::InList(list) => Node::InList(list.clone()),
        Rule::Engaged(e) => Node::Engagement(RuleEngagement {
            activity: e.activity.as_str().into(),
            within_seconds: e.within.unwrap_or(0),
            campaign: e.campaign.clone().unwrap_or_default(),
            count_op: e.count.0.as_str().into(),
            count: e.count.1,
        }),
        Rule::Behavior(b) => {
            let mut out = RuleBehavior {
                event: b.event.clone(),
                within_seconds: b.within.unwrap_or(0),
                r#where: b.filter.iter().map(property_to_proto).collect(),
                ..Default::default()
            };
            match &b.measure {
                Measure::Count(op, n) => (out.function, out.op, out.count) = ("did".into(), op.as_str().into(), *n),
                Measure::Sum { property, op, value } => {
                    (out.function, out.property, out.op) = ("sum".into(), property.clone(), op.as_str().into());
                    out.value = Some(value_to_proto(&Value::Number(*value)));
                }
                Measure::Last { op, value } => {
                    (out.function, out.op, out.value) =
                        ("last".into(), op.as_str().into(), Some(value_to_proto(value)));
                }
            }
            Node::Behavior(out)
        }
    };
    SegmentRule { node: Some(node) }
}

fn property_to_proto(test: &PropertyTest) -> RuleComparison {
    let field = Field::Attribute(test.property.clone());
    let Node::Comparison(mut c) = (match &test.test {
        Test::Compare(op, value) => comparison(&field, op.as_str(), std::slice::from_ref(value)),
        Test::In(values) => comparison(&field, "in", values),
        Test::Contains(text) => comparison(&field, "contains", &[Value::Text(text.clone())]),
        Test::StartsWith(text) => comparison(&field, "starts_with", &[Value::Text(text.clone())]),
        Test::Exists => comparison(&field, "exists", &[]),
    }) else {
        unreachable!("comparison() builds comparisons")
    };
    c.field = test.property.clone();
    c
}

/// A `where:` condition: a comparison whose field is a property name.
fn property_from_proto(c: &RuleComparison, at: &str) -> Result<PropertyTest, TreeError> {
    if !super::parse::valid_name(&c.field) {
        return Err(bad(&format!("{at}.field"), format!("{:?} is not a property name", c.field)));
    }
    let as_attribute = RuleComparison { field: format!("attributes.{}", c.field), ..c.clone() };
    let test = match compare(&as_attribute, at)? {
        Rule::Compare { op, value, .. } => Test::Compare(op, value),
        Rule::In { values, .. } => Test::In(values),
        Rule::Contains { text, .. } => Test::Contains(text),
        Rule::StartsWith { text, .. } => Test::StartsWith(text),
        _ => Test::Exists,
    };
    Ok(PropertyTest { property: c.field.clone(), test })
}

fn behavior(b: &RuleBehavior, at: &str) -> Result<Rule, TreeError> {
    if b.within_seconds < 0 {
        return Err(bad(&format!("{at}.within_seconds"), "must not be negative"));
    }
    let filter = b
        .r#where
        .iter()
        .enumerate()
        .map(|(i, c)| property_from_proto(c, &format!("{at}.where[{i}]")))
        .collect::<Result<_, _>>()?;
    let op = || Op::parse(&b.op).ok_or_else(|| bad(&format!("{at}.op"), format!("unknown operator {:?}", b.op)));
    let value = || -> Result<Value, TreeError> {
        let c =
            RuleComparison { field: "attributes.x".into(), op: "=".into(), values: b.value.iter().cloned().collect() };
        match compare(&c, at)? {
            Rule::Compare { value, .. } => Ok(value),
            _ => Err(bad(&format!("{at}.value"), "is required")),
        }
    };
    let measure = match b.function.as_str() {
        "did" if b.op.is_empty() && b.count == 0 => Measure::Count(Op::Ge, 1),
        "did" => Measure::Count(op()?, b.count),
        "sum" => match value()? {
            Value::Number(n) => Measure::Sum { property: b.property.clone(), op: op()?, value: n },
            _ => return Err(bad(&format!("{at}.value"), "sum compares with a number")),
        },
        "last" => match value()? {
            v @ (Value::Ago(_) | Value::At(_)) => Measure::Last { op: op()?, value: v },
            _ => return Err(bad(&format!("{at}.value"), "last compares with seconds_ago or a time")),
        },
        other => return Err(bad(&format!("{at}.function"), format!("{other:?} is not did, sum or last"))),
    };
    // Names, properties and operators are checked again when the canonical text is parsed.
    Ok(Rule::Behavior(Behavior {
        event: b.event.clone(),
        within: (b.within_seconds > 0).then_some(b.within_seconds),
        filter,
        measure,
    }))
}

fn comparison(field: &Field, op: &str, values: &[Value]) -> Node {
    Node::Comparison(RuleComparison {
        field: field.to_string(),
        op: op.into(),
        values: values.iter().map(value_to_proto).collect(),
    })
}

fn value_to_proto(value: &Value) -> RuleValue {
    let value = match value {
        Value::Text(text) => rule_value::Value::Text(text.clone()),
        Value::Number(n) => rule_value::Value::Number(*n),
        Value::Bool(b) => rule_value::Value::Boolean(*b),
        Value::Ago(seconds) => rule_value::Value::SecondsAgo(*seconds),
        Value::At(ms) => rule_value::Value::Time(prost_types::Timestamp {
            seconds: ms.div_euclid(1000),
            nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
        }),
    };
    RuleValue { value: Some(value) }
}

/// The tree as a [`Rule`], checked like parsed text (and normalized).
pub fn from_proto(tree: &SegmentRule, path: &str) -> Result<Rule, TreeError> {
    let rule = node(tree, path, 0)?.normalize();
    // The canonical text must parse back: one set of rules for text and trees.
    super::parse(&rule.to_string()).map_err(|e| bad(path, e.to_string()))
}

fn node(tree: &SegmentRule, path: &str, depth: usize) -> Result<Rule, TreeError> {
    if depth > 32 {
        return Err(bad(path, "nests deeper than 32 levels"));
    }
    let group = |group: &RuleGroup, kind: &str| -> Result<Vec<Rule>, TreeError> {
        if group.rules.is_empty() {
            return Err(bad(&format!("{path}.{kind}.rules"), "a group needs at least one rule"));
        }
        group.rules.iter().enumerate().map(|(i, r)| node(r, &format!("{path}.{kind}.rules[{i}]"), depth + 1)).collect()
    };
    Ok(match tree.node.as_ref().ok_or_else(|| bad(path, "empty node"))? {
        Node::All(g) => Rule::All(group(g, "all")?),
        Node::Any(g) => Rule::Any(group(g, "any")?),
        Node::Not(inner) => Rule::Not(Box::new(node(inner, &format!("{path}.not"), depth + 1)?)),
        Node::InList(list) if list.is_empty() => return Err(bad(&format!("{path}.in_list"), "names no list")),
        Node::InList(list) => Rule::InList(list.strip_prefix("lists/").unwrap_or(list).to_owned()),
        Node::Comparison(c) => compare(c, &format!("{path}.comparison"))?,
        Node::Engagement(e) => {
            let at = format!("{path}.engagement");
            let activity = Activity::parse(&e.activity)
                .ok_or_else(|| bad(&format!("{at}.activity"), format!("unknown activity {:?}", e.activity)))?;
            let op = if e.count_op.is_empty() {
                Op::Ge
            } else {
                Op::parse(&e.count_op)
                    .ok_or_else(|| bad(&format!("{at}.count_op"), format!("unknown operator {:?}", e.count_op)))?
            };
            let count = if e.count_op.is_empty() && e.count == 0 { 1 } else { e.count };
            if e.within_seconds < 0 {
                return Err(bad(&format!("{at}.within_seconds"), "must not be negative"));
            }
            Rule::Engaged(Engagement {
                activity,
                within: (e.within_seconds > 0).then_some(e.within_seconds),
                campaign: (!e.campaign.is_empty())
                    .then(|| e.campaign.strip_prefix("campaigns/").unwrap_or(&e.campaign).to_owned()),
                count: (op, count),
            })
        }
        Node::Behavior(b) => behavior(b, &format!("{path}.behavior"))?,
    })
}

fn compare(c: &RuleComparison, at: &str) -> Result<Rule, TreeError> {
    let field = match c.field.as_str() {
        "email" => Field::Email,
        "display_name" | "name" => Field::DisplayName,
        "status" => Field::Status,
        "created_at" => Field::CreatedAt,
        other => match other.strip_prefix("attributes.") {
            Some(key) if !key.is_empty() => Field::Attribute(key.to_owned()),
            _ => return Err(bad(&format!("{at}.field"), format!("unknown field {other:?}"))),
        },
    };
    let values: Vec<Value> = c
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let path = format!("{at}.values[{i}]");
            Ok(match v.value.as_ref().ok_or_else(|| bad(&path, "empty value"))? {
                rule_value::Value::Text(text) => Value::Text(text.clone()),
                rule_value::Value::Number(n) if n.is_finite() => Value::Number(*n),
                rule_value::Value::Number(_) => return Err(bad(&path, "must be a finite number")),
                rule_value::Value::Boolean(b) => Value::Bool(*b),
                rule_value::Value::SecondsAgo(s) => Value::Ago(*s),
                rule_value::Value::Time(t) => Value::At(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000),
            })
        })
        .collect::<Result<_, TreeError>>()?;
    let one = |values: Vec<Value>| -> Result<Value, TreeError> {
        let count = values.len();
        let mut values = values.into_iter();
        match (values.next(), count) {
            (Some(value), 1) => Ok(value),
            _ => Err(bad(&format!("{at}.values"), format!("`{}` takes exactly one value", c.op))),
        }
    };
    let text = |values: Vec<Value>| -> Result<String, TreeError> {
        match one(values)? {
            Value::Text(text) => Ok(text),
            _ => Err(bad(&format!("{at}.values[0]"), format!("`{}` takes text", c.op))),
        }
    };
    Ok(match c.op.as_str() {
        "in" if values.is_empty() => return Err(bad(&format!("{at}.values"), "`in` takes at least one value")),
        "in" => Rule::In { field, values },
        "contains" => Rule::Contains { field, text: text(values)? },
        "starts_with" => Rule::StartsWith { field, text: text(values)? },
        "exists" if values.is_empty() => Rule::Exists { field },
        "exists" => return Err(bad(&format!("{at}.values"), "`exists` takes no value")),
        op => {
            let op = Op::parse(op).ok_or_else(|| bad(&format!("{at}.op"), format!("unknown operator {op:?}")))?;
            Rule::Compare { field, op, value: one(values)? }
        }
    })
}
