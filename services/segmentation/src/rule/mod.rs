//! The segment rule language: a tree ([`Rule`]), a parser with positioned
//! errors ([`parse`]), a canonical printer (`Display`), and the proto tree
//! API clients can build rules with ([`proto`]). Text → tree → text is the
//! identity on canonical text, and so is tree → proto → tree.
//!
//! ```text
//! attributes.country in ["DE", "AT"] and attributes.age >= 18
//!   and in_list("weekly") and status = "active"
//!   and (opened(within: 30d) or clicked(campaign: "c1"))
//!   and not bounced(count >= 2) and created_at > now() - 90d
//! ```

mod parse;
pub mod proto;

use std::fmt;

pub use parse::{RuleError, parse};

/// A subscriber field a comparison reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Email,
    DisplayName,
    Status,
    CreatedAt,
    /// `attributes.<key>`.
    Attribute(String),
}

impl Field {
    pub fn is_time(&self) -> bool {
        matches!(self, Field::CreatedAt)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    pub fn parse(text: &str) -> Option<Op> {
        Some(match text {
            "=" => Op::Eq,
            "!=" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            _ => return None,
        })
    }

    /// Whether `left op right` holds for ordered values.
    pub fn holds<T: PartialOrd>(self, left: &T, right: &T) -> bool {
        match self {
            Op::Eq => left == right,
            Op::Ne => left != right,
            Op::Lt => left < right,
            Op::Le => left <= right,
            Op::Gt => left > right,
            Op::Ge => left >= right,
        }
    }
}

/// A literal on the right of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Number(f64),
    Bool(bool),
    /// `now() - N` seconds (negative: in the future), resolved when evaluated.
    Ago(i64),
    /// An absolute time, Unix milliseconds (written as a quoted date).
    At(i64),
}

/// What people did with our mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activity {
    Opened,
    Clicked,
    Bounced,
    Complained,
    Unsubscribed,
}

impl Activity {
    pub const ALL: [Activity; 5] =
        [Activity::Opened, Activity::Clicked, Activity::Bounced, Activity::Complained, Activity::Unsubscribed];

    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Opened => "opened",
            Activity::Clicked => "clicked",
            Activity::Bounced => "bounced",
            Activity::Complained => "complained",
            Activity::Unsubscribed => "unsubscribed",
        }
    }

    pub fn parse(text: &str) -> Option<Activity> {
        Activity::ALL.into_iter().find(|a| a.as_str() == text)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// `opened(within: 30d, campaign: "c1", count >= 2)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Engagement {
    pub activity: Activity,
    /// Only events in the last this many seconds.
    pub within: Option<i64>,
    /// Only events of this campaign (an id).
    pub campaign: Option<String>,
    /// How many events it takes; default `>= 1`.
    pub count: (Op, u32),
}

/// A condition over behavioral events of one name (TrackEvents):
/// `did("purchase", within: 30d, count >= 2, where: sku starts_with "BK-")`,
/// `sum("purchase.amount", within: 90d) > 100`, `last("login") < now() - 60d`.
#[derive(Debug, Clone, PartialEq)]
pub struct Behavior {
    pub event: String,
    /// Only events of the last this many seconds.
    pub within: Option<i64>,
    /// Conditions on the event's properties; all must hold.
    pub filter: Vec<PropertyTest>,
    pub measure: Measure,
}

/// What a behavioral condition compares.
#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    /// `did`: how many events (default `>= 1`). Holds at zero for subscribers without events.
    Count(Op, u32),
    /// `sum`: the total of a numeric property (0 without events; non-numbers are skipped).
    Sum { property: String, op: Op, value: f64 },
    /// `last`: when the latest event happened (`Value::Ago` or `Value::At`).
    /// Never holds for subscribers without such an event.
    Last { op: Op, value: Value },
}

/// One condition on an event property in `where:`.
#[derive(Debug, Clone, PartialEq)]
pub struct PropertyTest {
    pub property: String,
    pub test: Test,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    Compare(Op, Value),
    In(Vec<Value>),
    Contains(String),
    StartsWith(String),
    Exists,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    All(Vec<Rule>),
    Any(Vec<Rule>),
    Not(Box<Rule>),
    Compare {
        field: Field,
        op: Op,
        value: Value,
    },
    In {
        field: Field,
        values: Vec<Value>,
    },
    Contains {
        field: Field,
        text: String,
    },
    StartsWith {
        field: Field,
        text: String,
    },
    Exists {
        field: Field,
    },
    /// Confirmed member of the list (an id).
    InList(String),
    Engaged(Engagement),
    Behavior(Behavior),
}

/// The subscriber statuses `status` compares with.
pub const STATUSES: [&str; 5] = ["active", "unsubscribed", "bounced", "complained", "blocklisted"];

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Email => f.write_str("email"),
            Field::DisplayName => f.write_str("display_name"),
            Field::Status => f.write_str("status"),
            Field::CreatedAt => f.write_str("created_at"),
            Field::Attribute(key) => write!(f, "attributes.{key}"),
        }
    }
}

fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `90d`, `36h`, `15m`, `45s`: the largest unit that divides exactly.
pub fn duration(seconds: i64) -> String {
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if seconds != 0 && seconds % size == 0 {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 { format!("{}", value as i64) } else { format!("{value}") }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Text(text) => f.write_str(&quote(text)),
            Value::Number(n) => f.write_str(&number(*n)),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Ago(0) => f.write_str("now()"),
            Value::Ago(s) if *s > 0 => write!(f, "now() - {}", duration(*s)),
            Value::Ago(s) => write!(f, "now() + {}", duration(-s)),
            Value::At(ms) => {
                let text = jiff::Timestamp::from_millisecond(*ms).map(|t| t.to_string()).unwrap_or_default();
                f.write_str(&quote(&text))
            }
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `and` binds tighter than `or`; an `and` inside an `or` is bracketed anyway, for people.
        let joined = |rules: &[Rule], word: &str, bracket: fn(&Rule) -> bool| {
            let parts: Vec<String> =
                rules.iter().map(|r| if bracket(r) { format!("({r})") } else { r.to_string() }).collect();
            parts.join(word)
        };
        match self {
            Rule::All(rules) => f.write_str(&joined(rules, " and ", |r| matches!(r, Rule::Any(_)))),
            Rule::Any(rules) => f.write_str(&joined(rules, " or ", |r| matches!(r, Rule::All(_)))),
            Rule::Not(rule) => match rule.as_ref() {
                Rule::All(_) | Rule::Any(_) => write!(f, "not ({rule})"),
                _ => write!(f, "not {rule}"),
            },
            Rule::Compare { field, op, value } => write!(f, "{field} {} {value}", op.as_str()),
            Rule::In { field, values } => {
                let values: Vec<String> = values.iter().map(Value::to_string).collect();
                write!(f, "{field} in [{}]", values.join(", "))
            }
            Rule::Contains { field, text } => write!(f, "{field} contains {}", quote(text)),
            Rule::StartsWith { field, text } => write!(f, "{field} starts_with {}", quote(text)),
            Rule::Exists { field } => write!(f, "{field} exists"),
            Rule::InList(list) => write!(f, "in_list({})", quote(list)),
            Rule::Engaged(e) => {
                let mut args = Vec::new();
                if let Some(within) = e.within {
                    args.push(format!("within: {}", duration(within)));
                }
                if let Some(campaign) = &e.campaign {
                    args.push(format!("campaign: {}", quote(campaign)));
                }
                if e.count != (Op::Ge, 1) {
                    args.push(format!("count {} {}", e.count.0.as_str(), e.count.1));
                }
                write!(f, "{}({})", e.activity.as_str(), args.join(", "))
            }
            Rule::Behavior(b) => {
                let event = match &b.measure {
                    Measure::Sum { property, .. } => format!("{}.{property}", b.event),
                    _ => b.event.clone(),
                };
                let mut args = vec![quote(&event)];
                if let Some(within) = b.within {
                    args.push(format!("within: {}", duration(within)));
                }
                if let Measure::Count(op, n) = b.measure
                    && (op, n) != (Op::Ge, 1)
                {
                    args.push(format!("count {} {n}", op.as_str()));
                }
                if !b.filter.is_empty() {
                    let tests: Vec<String> = b.filter.iter().map(PropertyTest::to_string).collect();
                    args.push(format!("where: {}", tests.join(" and ")));
                }
                match &b.measure {
                    Measure::Count(..) => write!(f, "did({})", args.join(", ")),
                    Measure::Sum { op, value, .. } => {
                        write!(f, "sum({}) {} {}", args.join(", "), op.as_str(), number(*value))
                    }
                    Measure::Last { op, value } => write!(f, "last({}) {} {value}", args.join(", "), op.as_str()),
                }
            }
        }
    }
}

impl fmt::Display for PropertyTest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.property;
        match &self.test {
            Test::Compare(op, value) => write!(f, "{p} {} {value}", op.as_str()),
            Test::In(values) => {
                let values: Vec<String> = values.iter().map(Value::to_string).collect();
                write!(f, "{p} in [{}]", values.join(", "))
            }
            Test::Contains(text) => write!(f, "{p} contains {}", quote(text)),
            Test::StartsWith(text) => write!(f, "{p} starts_with {}", quote(text)),
            Test::Exists => write!(f, "{p} exists"),
        }
    }
}

impl Test {
    /// Whether a property value passes (same rules as attributes: another
    /// type never matches, text tests ignore case, `!=` is `not =`, so a
    /// missing property passes only `!=`).
    pub fn holds(&self, value: Option<&serde_json::Value>) -> bool {
        use serde_json::Value as J;
        let Some(value) = value else { return matches!(self, Test::Compare(Op::Ne, _)) };
        let equal = |v: &Value| match (v, value) {
            (Value::Text(t), J::String(s)) => t == s,
            (Value::Number(n), J::Number(m)) => m.as_f64() == Some(*n),
            (Value::Bool(b), J::Bool(c)) => b == c,
            _ => false,
        };
        match self {
            Test::Exists => !value.is_null(),
            Test::Compare(Op::Eq, v) => equal(v),
            Test::Compare(Op::Ne, v) => !equal(v),
            Test::Compare(op, v) => match (v, value) {
                (Value::Number(n), J::Number(m)) => m.as_f64().is_some_and(|m| op.holds(&m, n)),
                (Value::Text(t), J::String(s)) => op.holds(&s.as_str(), &t.as_str()),
                _ => false,
            },
            Test::In(values) => values.iter().any(equal),
            Test::Contains(t) => value.as_str().is_some_and(|s| s.to_lowercase().contains(&t.to_lowercase())),
            Test::StartsWith(t) => value.as_str().is_some_and(|s| s.to_lowercase().starts_with(&t.to_lowercase())),
        }
    }
}

impl Rule {
    /// The form the parser produces: nested `and`s (and `or`s) flattened,
    /// one-element groups unwrapped, double negation kept (it is what was written).
    pub fn normalize(self) -> Rule {
        match self {
            Rule::All(rules) => group(rules, true),
            Rule::Any(rules) => group(rules, false),
            Rule::Not(rule) => Rule::Not(Box::new(rule.normalize())),
            other => other,
        }
    }

    /// Comparisons and calls in the rule (for limits).
    pub fn size(&self) -> usize {
        match self {
            Rule::All(rules) | Rule::Any(rules) => rules.iter().map(Rule::size).sum::<usize>() + 1,
            Rule::Not(rule) => rule.size() + 1,
            _ => 1,
        }
    }
}

fn group(rules: Vec<Rule>, all: bool) -> Rule {
    let mut flat = Vec::with_capacity(rules.len());
    for rule in rules.into_iter().map(Rule::normalize) {
        match rule {
            Rule::All(inner) if all => flat.extend(inner),
            Rule::Any(inner) if !all => flat.extend(inner),
            other => flat.push(other),
        }
    }
    if flat.len() == 1 {
        return flat.pop().expect("one rule");
    }
    if all { Rule::All(flat) } else { Rule::Any(flat) }
}

#[cfg(test)]
mod tests;
