//! Lexer and recursive-descent parser. Errors carry the line and column of
//! the bad token (1-based, in characters), its length for a caret, and a
//! hint that says what would have been valid.

use std::fmt;

use super::{Activity, Behavior, Engagement, Field, Measure, Op, PropertyTest, Rule, STATUSES, Test, Value};

/// Longest rule text, and most comparisons in one rule.
pub(super) const MAX_RULE_BYTES: usize = 16 * 1024;
pub(super) const MAX_RULE_SIZE: usize = 256;
const MAX_DEPTH: usize = 32;

/// A parse error at a position of the rule text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub line: usize,
    pub column: usize,
    /// Characters to underline (at least 1).
    pub width: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: {}", self.line, self.column, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl RuleError {
    /// The offending line with a caret under the bad token, for terminals.
    pub fn caret(&self, text: &str) -> String {
        let line = text.lines().nth(self.line.saturating_sub(1)).unwrap_or_default();
        format!("{line}\n{}{}", " ".repeat(self.column.saturating_sub(1)), "^".repeat(self.width.max(1)))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Text(String),
    Number(f64),
    /// A number with a unit: seconds.
    Duration(i64),
    Op(Op),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Colon,
    Minus,
    Plus,
    End,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Ident(name) => format!("`{name}`"),
            Token::Text(text) => format!("\"{text}\""),
            Token::Number(n) => format!("{n}"),
            Token::Duration(s) => super::duration(*s),
            Token::Op(op) => format!("`{}`", op.as_str()),
            Token::LParen => "`(`".into(),
            Token::RParen => "`)`".into(),
            Token::LBracket => "`[`".into(),
            Token::RBracket => "`]`".into(),
            Token::Comma => "`,`".into(),
            Token::Colon => "`:`".into(),
            Token::Minus => "`-`".into(),
            Token::Plus => "`+`".into(),
            Token::End => "the end of the rule".into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Spanned {
    token: Token,
    line: usize,
    column: usize,
    width: usize,
}

fn error(at: &Spanned, message: impl Into<String>, hint: Option<&str>) -> RuleError {
    RuleError {
        line: at.line,
        column: at.column,
        width: at.width,
        message: message.into(),
        hint: hint.map(str::to_owned),
    }
}

fn lex(text: &str) -> Result<Vec<Spanned>, RuleError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let (mut i, mut line, mut line_start) = (0, 1, 0);
    while i < chars.len() {
        let c = chars[i];
        let column = i - line_start + 1;
        let start = i;
        let at = |width: usize| Spanned { token: Token::End, line, column, width };
        if c == '\n' {
            i += 1;
            line += 1;
            line_start = i;
            continue;
        }
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let token = match c {
            '(' => Token::LParen,
            ')' => Token::RParen,
            '[' => Token::LBracket,
            ']' => Token::RBracket,
            ',' => Token::Comma,
            ':' => Token::Colon,
            '+' => Token::Plus,
            // A minus before a digit in a value position is a negative number; otherwise `now() - 30d`.
            '-' if !(chars.get(i + 1).is_some_and(char::is_ascii_digit)
                && matches!(
                    tokens.last().map(|t: &Spanned| &t.token),
                    Some(Token::Op(_) | Token::LBracket | Token::Comma)
                )) =>
            {
                Token::Minus
            }
            '=' => {
                if chars.get(i + 1) == Some(&'=') {
                    i += 1;
                }
                Token::Op(Op::Eq)
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                i += 1;
                Token::Op(Op::Ne)
            }
            '<' | '>' => {
                let eq = chars.get(i + 1) == Some(&'=');
                if eq {
                    i += 1;
                }
                Token::Op(match (c, eq) {
                    ('<', false) => Op::Lt,
                    ('<', true) => Op::Le,
                    ('>', false) => Op::Gt,
                    _ => Op::Ge,
                })
            }
            '"' | '\'' => {
                let quote = c;
                let mut text = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None | Some('\n') => {
                            return Err(error(
                                &at(i - start),
                                "unterminated text",
                                Some(&format!("close it with {quote}")),
                            ));
                        }
                        Some('\\') => {
                            let escaped = match chars.get(i + 1) {
                                Some('n') => '\n',
                                Some('t') => '\t',
                                Some('r') => '\r',
                                Some(other) => *other,
                                None => return Err(error(&at(1), "unterminated text", None)),
                            };
                            text.push(escaped);
                            i += 2;
                        }
                        Some(q) if *q == quote => break,
                        Some(other) => {
                            text.push(*other);
                            i += 1;
                        }
                    }
                }
                Token::Text(text)
            }
            c if c.is_ascii_digit() || c == '-' => {
                let mut end = i + 1;
                while end < chars.len() && (chars[end].is_ascii_digit() || chars[end] == '.' || chars[end] == '_') {
                    end += 1;
                }
                let digits: String = chars[i..end].iter().filter(|c| **c != '_').collect();
                let unit_end = (end..chars.len()).find(|&j| !chars[j].is_ascii_alphabetic()).unwrap_or(chars.len());
                let unit: String = chars[end..unit_end].iter().collect();
                let width = unit_end - i;
                let value: f64 =
                    digits.parse().map_err(|_| error(&at(width), format!("{digits:?} is not a number"), None))?;
                i = unit_end - 1;
                if unit.is_empty() {
                    Token::Number(value)
                } else {
                    let size = match unit.as_str() {
                        "s" => 1,
                        "m" => 60,
                        "h" => 3_600,
                        "d" => 86_400,
                        "w" => 604_800,
                        _ => {
                            return Err(error(
                                &at(width),
                                format!("unknown duration unit {unit:?}"),
                                Some("use s, m, h, d or w, e.g. 30d"),
                            ));
                        }
                    };
                    if value.fract() != 0.0 || !(0.0..=1e9).contains(&value) {
                        return Err(error(&at(width), "a duration is a whole, positive number", Some("e.g. 90d")));
                    }
                    Token::Duration(value as i64 * size)
                }
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut end = i + 1;
                while end < chars.len() && (chars[end].is_alphanumeric() || matches!(chars[end], '_' | '.' | '-')) {
                    end += 1;
                }
                let name: String = chars[i..end].iter().collect();
                i = end - 1;
                Token::Ident(name)
            }
            other => {
                return Err(error(
                    &at(1),
                    format!("unexpected character {other:?}"),
                    Some("quote text values, e.g. \"DE\""),
                ));
            }
        };
        i += 1;
        tokens.push(Spanned { token, line, column, width: (i - start).max(1) });
    }
    let column = chars.len() - line_start + 1;
    tokens.push(Spanned { token: Token::End, line, column, width: 1 });
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Spanned>,
    at: usize,
    depth: usize,
}

const KEYWORDS: [&str; 9] = ["and", "or", "not", "in", "contains", "starts_with", "exists", "true", "false"];

/// Parses rule text into a normalized [`Rule`].
pub fn parse(text: &str) -> Result<Rule, RuleError> {
    if text.len() > MAX_RULE_BYTES {
        return Err(RuleError {
            line: 1,
            column: 1,
            width: 1,
            message: format!("the rule is longer than {MAX_RULE_BYTES} bytes"),
            hint: None,
        });
    }
    let mut parser = Parser { tokens: lex(text)?, at: 0, depth: 0 };
    if parser.peek().token == Token::End {
        return Err(error(parser.peek(), "the rule is empty", Some("e.g. attributes.country = \"DE\"")));
    }
    let rule = parser.or()?;
    let next = parser.peek();
    if next.token != Token::End {
        return Err(error(
            next,
            format!("unexpected {}", next.token.describe()),
            Some("join conditions with `and` or `or`"),
        ));
    }
    let rule = rule.normalize();
    if rule.size() > MAX_RULE_SIZE {
        return Err(RuleError {
            line: 1,
            column: 1,
            width: 1,
            message: format!("the rule has more than {MAX_RULE_SIZE} conditions"),
            hint: None,
        });
    }
    Ok(rule)
}

impl Parser {
    fn peek(&self) -> &Spanned {
        &self.tokens[self.at.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Spanned {
        let token = self.peek().clone();
        if self.at < self.tokens.len() - 1 {
            self.at += 1;
        }
        token
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(&self.peek().token, Token::Ident(name) if name.eq_ignore_ascii_case(word))
    }

    fn expect(&mut self, token: Token, hint: &str) -> Result<Spanned, RuleError> {
        let next = self.next();
        if next.token == token {
            Ok(next)
        } else {
            Err(error(&next, format!("expected {}, found {}", token.describe(), next.token.describe()), Some(hint)))
        }
    }

    fn or(&mut self) -> Result<Rule, RuleError> {
        let mut rules = vec![self.and()?];
        while self.keyword("or") {
            self.next();
            rules.push(self.and()?);
        }
        Ok(if rules.len() == 1 { rules.pop().expect("one") } else { Rule::Any(rules) })
    }

    fn and(&mut self) -> Result<Rule, RuleError> {
        let mut rules = vec![self.unary()?];
        while self.keyword("and") {
            self.next();
            rules.push(self.unary()?);
        }
        Ok(if rules.len() == 1 { rules.pop().expect("one") } else { Rule::All(rules) })
    }

    fn unary(&mut self) -> Result<Rule, RuleError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(error(self.peek(), format!("the rule nests deeper than {MAX_DEPTH} levels"), None));
        }
        let rule = if self.keyword("not") {
            self.next();
            Rule::Not(Box::new(self.unary()?))
        } else {
            self.primary()?
        };
        self.depth -= 1;
        Ok(rule)
    }

    fn primary(&mut self) -> Result<Rule, RuleError> {
        let start = self.next();
        match &start.token {
            Token::LParen => {
                let rule = self.or()?;
                self.expect(Token::RParen, "close the group with `)`")?;
                Ok(rule)
            }
            Token::Ident(name) if self.peek().token == Token::LParen => self.call(&start, name.clone()),
            Token::Ident(name) if !KEYWORDS.contains(&name.to_ascii_lowercase().as_str()) => {
                let field = field(&start, name)?;
                self.condition(field, &start)
            }
            other => Err(error(
                &start,
                format!("expected a condition, found {}", other.describe()),
                Some("e.g. attributes.country = \"DE\", in_list(\"weekly\"), opened(within: 30d)"),
            )),
        }
    }

    fn condition(&mut self, field: Field, at: &Spanned) -> Result<Rule, RuleError> {
        let next = self.next();
        let rule = match &next.token {
            Token::Op(op) => {
                let value = self.value(&field)?;
                Rule::Compare { field: field.clone(), op: *op, value }
            }
            Token::Ident(word) if word.eq_ignore_ascii_case("in") => {
                self.expect(Token::LBracket, "list the values: status in [\"active\", \"bounced\"]")?;
                let mut values = vec![self.value(&field)?];
                while self.peek().token == Token::Comma {
                    self.next();
                    values.push(self.value(&field)?);
                }
                self.expect(Token::RBracket, "close the list with `]`")?;
                Rule::In { field: field.clone(), values }
            }
            Token::Ident(word) if word.eq_ignore_ascii_case("contains") || word.eq_ignore_ascii_case("starts_with") => {
                let text = self.next();
                let Token::Text(value) = text.token else {
                    return Err(error(
                        &text,
                        format!("`{word}` takes quoted text"),
                        Some("e.g. email contains \"@example.com\""),
                    ));
                };
                if word.eq_ignore_ascii_case("contains") {
                    Rule::Contains { field: field.clone(), text: value }
                } else {
                    Rule::StartsWith { field: field.clone(), text: value }
                }
            }
            Token::Ident(word) if word.eq_ignore_ascii_case("exists") => Rule::Exists { field: field.clone() },
            other => {
                return Err(error(
                    &next,
                    format!("expected a comparison after {}, found {}", at.token.describe(), other.describe()),
                    Some("use =, !=, <, <=, >, >=, in [...], contains, starts_with or exists"),
                ));
            }
        };
        if field == Field::Status {
            check_statuses(&rule, &next)?;
        }
        Ok(rule)
    }

    fn value(&mut self, field: &Field) -> Result<Value, RuleError> {
        self.typed_value(field.is_time(), &field.to_string(), "created_at")
    }

    /// A literal; `time` says the left side is a time (`what` names it in errors).
    fn typed_value(&mut self, time: bool, what: &str, times: &str) -> Result<Value, RuleError> {
        let next = self.next();
        let value = match &next.token {
            Token::Text(text) if time => {
                let ms = parse_time(text).ok_or_else(|| {
                    error(
                        &next,
                        format!("{text:?} is not a date"),
                        Some("write \"2026-01-31\", \"2026-01-31T09:00:00Z\" or now() - 30d"),
                    )
                })?;
                Value::At(ms)
            }
            Token::Text(text) => Value::Text(text.clone()),
            Token::Number(n) => Value::Number(*n),
            Token::Ident(word) if word == "true" || word == "false" => Value::Bool(word == "true"),
            Token::Ident(word) if word == "now" => {
                self.expect(Token::LParen, "now() takes no arguments")?;
                self.expect(Token::RParen, "now() takes no arguments")?;
                match self.peek().token {
                    Token::Minus | Token::Plus => {
                        let sign = if self.next().token == Token::Minus { 1 } else { -1 };
                        let amount = self.next();
                        let Token::Duration(seconds) = amount.token else {
                            return Err(error(&amount, "expected a duration", Some("e.g. now() - 90d")));
                        };
                        Value::Ago(sign * seconds)
                    }
                    _ => Value::Ago(0),
                }
            }
            other => {
                return Err(error(
                    &next,
                    format!("expected a value, found {}", other.describe()),
                    Some("quote text (\"DE\"), or write a number, true, false or now() - 30d"),
                ));
            }
        };
        if time && !matches!(value, Value::Ago(_) | Value::At(_)) {
            return Err(error(
                &next,
                format!("{what} is a time"),
                Some("compare it with now() - 30d or a date like \"2026-01-31\""),
            ));
        }
        if !time && matches!(value, Value::Ago(_)) {
            return Err(error(&next, format!("{what} is not a time"), Some(&format!("now() compares with {times}"))));
        }
        Ok(value)
    }

    /// `did(...)`, `sum(...) > N`, `last(...) < now() - 60d`; the `(` is consumed.
    fn behavior(&mut self, function: &str) -> Result<Rule, RuleError> {
        const ARGS: &str = "within: 30d, count >= 2 (did only) or where: sku starts_with \"BK-\"";
        let first = self.next();
        let Token::Text(event) = first.token.clone() else {
            let example = if function == "sum" { "sum(\"purchase.amount\") > 100" } else { "did(\"purchase\")" };
            return Err(error(&first, format!("{function} takes the event name in quotes first"), Some(example)));
        };
        let (event, property) = match (function, event.split_once('.')) {
            ("sum", Some((event, property))) if valid_name(event) && valid_name(property) => {
                (event.to_owned(), Some(property.to_owned()))
            }
            ("sum", _) => {
                return Err(error(&first, "sum takes \"event.property\"", Some("sum(\"purchase.amount\") > 100")));
            }
            (_, _) if valid_name(&event) => (event, None),
            _ => {
                return Err(error(
                    &first,
                    format!("{event:?} is not an event name"),
                    Some("a letter, then letters, digits, _ or -"),
                ));
            }
        };
        let mut behavior = Behavior { event, within: None, filter: Vec::new(), measure: Measure::Count(Op::Ge, 1) };
        while self.peek().token == Token::Comma {
            self.next();
            let arg = self.next();
            match &arg.token {
                Token::Ident(key) if key == "within" => {
                    self.expect(Token::Colon, "within: 30d")?;
                    let value = self.next();
                    let Token::Duration(seconds) = value.token else {
                        return Err(error(&value, "within takes a duration", Some("within: 30d")));
                    };
                    behavior.within = Some(seconds);
                }
                Token::Ident(key) if key == "count" && function == "did" => {
                    let op = self.next();
                    let Token::Op(op) = op.token else {
                        return Err(error(&op, "count takes a comparison", Some("count >= 2")));
                    };
                    behavior.measure = Measure::Count(op, self.whole_number("count >= 2")?);
                }
                Token::Ident(key) if key == "where" => {
                    self.expect(Token::Colon, "where: sku starts_with \"BK-\"")?;
                    behavior.filter.push(self.property_test()?);
                    while self.keyword("and") {
                        self.next();
                        behavior.filter.push(self.property_test()?);
                    }
                }
                other => {
                    return Err(error(&arg, format!("unexpected {} in {function}(...)", other.describe()), Some(ARGS)));
                }
            }
        }
        self.expect(Token::RParen, &format!("close {function}( with `)`; arguments are {ARGS}"))?;
        match function {
            "sum" => {
                let op = self.next();
                let Token::Op(op) = op.token else {
                    return Err(error(&op, "sum(...) compares with a number", Some("sum(\"purchase.amount\") > 100")));
                };
                let value = self.next();
                let Token::Number(value) = value.token else {
                    return Err(error(
                        &value,
                        "sum(...) compares with a number",
                        Some("sum(\"purchase.amount\") > 100"),
                    ));
                };
                let property = property.expect("sum has a property");
                behavior.measure = Measure::Sum { property, op, value };
            }
            "last" => {
                let op = self.next();
                let Token::Op(op @ (Op::Lt | Op::Le | Op::Gt | Op::Ge)) = op.token else {
                    return Err(error(
                        &op,
                        "last(...) compares with <, <=, > or >=",
                        Some("last(\"login\") < now() - 60d"),
                    ));
                };
                let value = self.typed_value(true, &format!("last({:?})", behavior.event), "last(...)")?;
                behavior.measure = Measure::Last { op, value };
            }
            _ => {}
        }
        Ok(Rule::Behavior(behavior))
    }

    fn whole_number(&mut self, example: &str) -> Result<u32, RuleError> {
        let value = self.next();
        match value.token {
            Token::Number(n) if n.fract() == 0.0 && (0.0..=1e6).contains(&n) => Ok(n as u32),
            _ => Err(error(&value, "count compares with a whole number", Some(example))),
        }
    }

    /// `sku starts_with "BK-"`, `amount > 20`, `currency in ["EUR", "USD"]`, `coupon exists`.
    fn property_test(&mut self) -> Result<PropertyTest, RuleError> {
        let start = self.next();
        let property = match &start.token {
            Token::Ident(name) if valid_name(name) && !KEYWORDS.contains(&name.as_str()) => name.clone(),
            other => {
                return Err(error(
                    &start,
                    format!("expected an event property, found {}", other.describe()),
                    Some("where: sku starts_with \"BK-\" and amount > 20"),
                ));
            }
        };
        let next = self.next();
        let test = match &next.token {
            Token::Op(op) => Test::Compare(*op, self.typed_value(false, &property, "last(...)")?),
            Token::Ident(word) if word == "in" => {
                self.expect(Token::LBracket, "list the values: currency in [\"EUR\", \"USD\"]")?;
                let mut values = vec![self.typed_value(false, &property, "last(...)")?];
                while self.peek().token == Token::Comma {
                    self.next();
                    values.push(self.typed_value(false, &property, "last(...)")?);
                }
                self.expect(Token::RBracket, "close the list with `]`")?;
                Test::In(values)
            }
            Token::Ident(word) if word == "contains" || word == "starts_with" => {
                let text = self.next();
                let Token::Text(value) = text.token else {
                    return Err(error(&text, format!("`{word}` takes quoted text"), Some("sku starts_with \"BK-\"")));
                };
                if word == "contains" { Test::Contains(value) } else { Test::StartsWith(value) }
            }
            Token::Ident(word) if word == "exists" => Test::Exists,
            other => {
                return Err(error(
                    &next,
                    format!("expected a comparison after `{property}`, found {}", other.describe()),
                    Some("use =, !=, <, <=, >, >=, in [...], contains, starts_with or exists"),
                ));
            }
        };
        Ok(PropertyTest { property, test })
    }

    fn call(&mut self, at: &Spanned, name: String) -> Result<Rule, RuleError> {
        self.expect(Token::LParen, "")?;
        if name == "in_list" {
            let arg = self.next();
            let Token::Text(list) = arg.token else {
                return Err(error(&arg, "in_list takes the list's id in quotes", Some("in_list(\"weekly\")")));
            };
            self.expect(Token::RParen, "in_list takes one list")?;
            let id = list.strip_prefix("lists/").unwrap_or(&list).to_owned();
            return Ok(Rule::InList(id));
        }
        if matches!(name.as_str(), "did" | "sum" | "last") {
            return self.behavior(&name);
        }
        let Some(activity) = Activity::parse(&name) else {
            let hint = format!(
                "the functions are in_list, did, sum, last, {}",
                Activity::ALL.map(Activity::as_str).join(", ")
            );
            return Err(error(at, format!("unknown function `{name}`"), Some(&hint)));
        };
        let mut engagement = Engagement { activity, within: None, campaign: None, count: (Op::Ge, 1) };
        while self.peek().token != Token::RParen {
            let arg = self.next();
            let Token::Ident(key) = &arg.token else {
                return Err(error(
                    &arg,
                    format!("expected an argument, found {}", arg.token.describe()),
                    Some("within: 30d, campaign: \"ID\" or count >= 2"),
                ));
            };
            match key.as_str() {
                "within" => {
                    self.expect(Token::Colon, "within: 30d")?;
                    let value = self.next();
                    let Token::Duration(seconds) = value.token else {
                        return Err(error(&value, "within takes a duration", Some("within: 30d")));
                    };
                    engagement.within = Some(seconds);
                }
                "campaign" => {
                    self.expect(Token::Colon, "campaign: \"ID\"")?;
                    let value = self.next();
                    let Token::Text(campaign) = value.token else {
                        return Err(error(
                            &value,
                            "campaign takes the campaign's id in quotes",
                            Some("campaign: \"c1\""),
                        ));
                    };
                    engagement.campaign = Some(campaign.strip_prefix("campaigns/").unwrap_or(&campaign).to_owned());
                }
                "count" => {
                    let op = self.next();
                    let Token::Op(op) = op.token else {
                        return Err(error(&op, "count takes a comparison", Some("count >= 2")));
                    };
                    engagement.count = (op, self.whole_number("count >= 2")?);
                }
                other => {
                    return Err(error(
                        &arg,
                        format!("unknown argument `{other}`"),
                        Some("within: 30d, campaign: \"ID\" or count >= 2"),
                    ));
                }
            }
            if self.peek().token == Token::Comma {
                self.next();
            } else if self.peek().token != Token::RParen {
                let next = self.peek().clone();
                return Err(error(&next, format!("expected `,` or `)`, found {}", next.token.describe()), None));
            }
        }
        self.next();
        Ok(Rule::Engaged(engagement))
    }
}

/// Event and property names: a letter, then letters, digits, `_` or `-` (TrackEvents' rule).
pub(crate) fn valid_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text.starts_with(|c: char| c.is_ascii_alphabetic())
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn field(at: &Spanned, name: &str) -> Result<Field, RuleError> {
    Ok(match name {
        "email" => Field::Email,
        "display_name" | "name" => Field::DisplayName,
        "status" => Field::Status,
        "created_at" => Field::CreatedAt,
        other => match other.strip_prefix("attributes.").or_else(|| other.strip_prefix("attr.")) {
            Some(key) if !key.is_empty() => Field::Attribute(key.to_owned()),
            _ => {
                let hint = format!(
                    "fields are email, display_name, status, created_at and attributes.<key>: did you mean attributes.{other}?"
                );
                return Err(error(at, format!("unknown field `{other}`"), Some(&hint)));
            }
        },
    })
}

fn check_statuses(rule: &Rule, at: &Spanned) -> Result<(), RuleError> {
    let values: Vec<&Value> = match rule {
        Rule::Compare { value, op: Op::Eq | Op::Ne, .. } => vec![value],
        Rule::In { values, .. } => values.iter().collect(),
        Rule::Exists { .. } => vec![],
        _ => return Err(error(at, "status compares with = , != or in [...]", Some("status = \"active\""))),
    };
    for value in values {
        if !matches!(value, Value::Text(text) if STATUSES.contains(&text.as_str())) {
            let hint = format!("status is one of {}", STATUSES.map(|s| format!("\"{s}\"")).join(", "));
            return Err(error(at, format!("{value} is not a status"), Some(&hint)));
        }
    }
    Ok(())
}

/// `2026-01-31` (midnight UTC) or an RFC 3339 time, as Unix ms.
fn parse_time(text: &str) -> Option<i64> {
    if let Ok(timestamp) = text.parse::<jiff::Timestamp>() {
        return Some(timestamp.as_millisecond());
    }
    let date: jiff::civil::Date = text.parse().ok()?;
    Some(format!("{date}T00:00:00Z").parse::<jiff::Timestamp>().ok()?.as_millisecond())
}
