//! The in-memory projection of one tenant's subscribers, and rule
//! evaluation over it. Columnar: subscribers get dense numbers; statuses,
//! list memberships and "ever did X (in campaign C)" are roaring bitmaps;
//! attributes are typed columns (numbers, dictionary-coded text, booleans);
//! engagement is a time-ordered event log per activity. A rule compiles to
//! bitmap operations; only comparisons that need values scan a column, and
//! inside `and` they scan only the rows the bitmap conditions left.
//!
//! Semantics (the naive evaluator in the tests is the reference):
//! `!=` is `not =` (a missing attribute is "not equal"); a value of another
//! type never matches (`"30"` is not `30`); `contains` and `starts_with`
//! ignore case; `in_list` means a confirmed member.

mod behavior;
mod columns;
#[cfg(test)]
mod naive;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashMap;

use roaring::{MultiOps, RoaringBitmap};
use serde_json::{Map, Value as Json};

use crate::rule::{Activity, Engagement, Field, Op, Rule, STATUSES, Value};
use columns::{Attribute, TextColumn};

/// One subscriber's state as events and the store carry it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub status: String,
    pub created_at: i64,
    pub attributes: Map<String, Json>,
    /// List id → `unconfirmed`, `confirmed` or `unsubscribed`: the
    /// memberships that changed (others stay as they were).
    pub subscriptions: Vec<(String, String)>,
}

/// One engagement event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Event {
    subscriber: u32,
    /// Seconds since the Unix epoch.
    time: u32,
    campaign: u32,
}

/// One day of one activity: its events, and who had one (for `within:` as bitmap unions).
#[derive(Default)]
struct Day {
    events: Vec<Event>,
    members: RoaringBitmap,
}

const DAY: u32 = 86_400;

/// A tenant's projection.
#[derive(Default)]
pub struct Projection {
    ids: Vec<u128>,
    index: HashMap<u128, u32>,
    alive: RoaringBitmap,
    emails: TextColumn,
    names: TextColumn,
    created: Vec<i64>,
    statuses: [RoaringBitmap; 5],
    lists: HashMap<String, RoaringBitmap>,
    attributes: HashMap<String, Attribute>,
    campaigns: HashMap<String, u32>,
    /// Per activity, events bucketed by UTC day (insertion in any order is O(log days)).
    events: [std::collections::BTreeMap<u32, Day>; 5],
    /// Subscribers with at least one event of the activity, and per (activity, campaign).
    ever: [RoaringBitmap; 5],
    ever_in: HashMap<(usize, u32), RoaringBitmap>,
    /// Behavioral events by name.
    behaviors: HashMap<String, behavior::EventLog>,
}

/// 32 hex digits (Broadside ids) as a number.
fn parse_id(id: &str) -> Option<u128> {
    (id.len() == 32).then(|| u128::from_str_radix(id, 16).ok()).flatten()
}

fn status_index(status: &str) -> usize {
    STATUSES.iter().position(|s| *s == status).unwrap_or(0)
}

impl Projection {
    pub fn len(&self) -> u64 {
        self.alive.len()
    }

    pub fn is_empty(&self) -> bool {
        self.alive.is_empty()
    }

    /// The id of a dense number.
    pub fn id(&self, dense: u32) -> String {
        format!("{:032x}", self.ids[dense as usize])
    }

    fn dense(&mut self, id: &str) -> Option<u32> {
        let key = parse_id(id)?;
        if let Some(dense) = self.index.get(&key) {
            return Some(*dense);
        }
        let dense = self.ids.len() as u32;
        self.ids.push(key);
        self.index.insert(key, dense);
        self.created.push(0);
        Some(dense)
    }

    /// Sets a subscriber's whole state (a store row or an upsert event).
    pub fn upsert(&mut self, row: &Row) {
        let Some(dense) = self.dense(&row.id) else {
            tracing::warn!(id = %row.id, "segmentation skips a subscriber whose id is not a Broadside id");
            return;
        };
        self.alive.insert(dense);
        self.emails.set(dense, &row.email.to_lowercase());
        self.names.set(dense, &row.display_name);
        self.created[dense as usize] = row.created_at;
        for (index, bitmap) in self.statuses.iter_mut().enumerate() {
            if index == status_index(&row.status) {
                bitmap.insert(dense);
            } else {
                bitmap.remove(dense);
            }
        }
        for attribute in self.attributes.values_mut() {
            attribute.clear(dense);
        }
        for (key, value) in &row.attributes {
            self.attributes.entry(key.clone()).or_default().set(dense, value);
        }
        // Memberships the row names change; others stay (an import's event names only its list).
        for (list, status) in &row.subscriptions {
            self.set_subscription(dense, list, status);
        }
    }

    fn set_subscription(&mut self, dense: u32, list: &str, status: &str) {
        let members = self.lists.entry(list.to_owned()).or_default();
        if status == "confirmed" {
            members.insert(dense);
        } else {
            members.remove(dense);
        }
    }

    /// When a known subscriber was created.
    pub fn created_at(&self, id: &str) -> Option<i64> {
        let dense = *self.index.get(&parse_id(id)?)?;
        Some(self.created[dense as usize]).filter(|t| *t != 0)
    }

    /// One membership changed.
    pub fn subscription(&mut self, id: &str, list: &str, status: &str) {
        if let Some(dense) = self.dense(id) {
            self.set_subscription(dense, list, status);
        }
    }

    /// The subscriber is gone (erased): nothing about them stays.
    pub fn erase(&mut self, id: &str) {
        let Some(key) = parse_id(id) else { return };
        let Some(&dense) = self.index.get(&key) else { return };
        self.alive.remove(dense);
        self.emails.set(dense, "");
        self.names.set(dense, "");
        for bitmap in self.statuses.iter_mut().chain(self.lists.values_mut()).chain(self.ever.iter_mut()) {
            bitmap.remove(dense);
        }
        for bitmap in self.ever_in.values_mut() {
            bitmap.remove(dense);
        }
        for attribute in self.attributes.values_mut() {
            attribute.clear(dense);
        }
        for days in &mut self.events {
            for day in days.values_mut() {
                day.events.retain(|e| e.subscriber != dense);
                day.members.remove(dense);
            }
        }
        self.erase_behavior(dense);
    }

    /// Records one engagement event at `time_ms`.
    pub fn engage(&mut self, id: &str, activity: Activity, campaign: &str, time_ms: i64) {
        let Some(dense) = self.dense(id) else { return };
        let next = self.campaigns.len() as u32;
        let campaign = *self.campaigns.entry(campaign.to_owned()).or_insert(next);
        let event = Event { subscriber: dense, time: (time_ms / 1000).clamp(0, u32::MAX as i64) as u32, campaign };
        let day = self.events[activity.index()].entry(event.time / DAY).or_default();
        day.events.push(event);
        day.members.insert(dense);
        self.ever[activity.index()].insert(dense);
        self.ever_in.entry((activity.index(), campaign)).or_default().insert(dense);
    }

    /// Gives back spare capacity (after a bulk load).
    pub fn shrink(&mut self) {
        self.ids.shrink_to_fit();
        self.created.shrink_to_fit();
        self.emails.shrink();
        self.names.shrink();
        for attribute in self.attributes.values_mut() {
            attribute.shrink();
        }
        for days in &mut self.events {
            for day in days.values_mut() {
                day.events.shrink_to_fit();
            }
        }
        self.shrink_behavior();
    }

    /// Approximate heap bytes held (for the benchmark's bytes per subscriber).
    pub fn heap_bytes(&self) -> usize {
        let bitmaps = |b: &RoaringBitmap| b.serialized_size();
        self.ids.capacity() * 16
            + self.index.capacity() * (16 + 4 + 1)
            + bitmaps(&self.alive)
            + self.emails.heap_bytes()
            + self.names.heap_bytes()
            + self.created.capacity() * 8
            + self.statuses.iter().map(bitmaps).sum::<usize>()
            + self.lists.values().map(bitmaps).sum::<usize>()
            + self.attributes.values().map(Attribute::heap_bytes).sum::<usize>()
            + self
                .events
                .iter()
                .flat_map(|days| days.values())
                .map(|day| day.events.capacity() * std::mem::size_of::<Event>() + bitmaps(&day.members) + 48)
                .sum::<usize>()
            + self.ever.iter().map(bitmaps).sum::<usize>()
            + self.ever_in.values().map(bitmaps).sum::<usize>()
            + self.behavior_bytes()
    }

    /// The members matching `rule` at `now_ms`.
    pub fn evaluate(&self, rule: &Rule, now_ms: i64) -> RoaringBitmap {
        self.eval(rule, now_ms, None)
    }

    /// `rule`, restricted to `within` when given (so scans visit fewer rows).
    fn eval(&self, rule: &Rule, now_ms: i64, within: Option<&RoaringBitmap>) -> RoaringBitmap {
        let scope = || within.cloned().unwrap_or_else(|| self.alive.clone());
        let mut result = match rule {
            Rule::All(rules) => {
                // Bitmap-only conditions first: they are cheap and narrow the scans. The value
                // comparisons that follow run fused, in one pass over the rows left.
                let (cheap, scans): (Vec<&Rule>, Vec<&Rule>) = rules.iter().partition(|r| is_cheap(r));
                let mut acc = scope();
                let mut tests: Vec<Box<dyn Fn(u32) -> bool + '_>> = Vec::new();
                for rule in cheap.into_iter().chain(scans) {
                    if acc.is_empty() {
                        break;
                    }
                    match self.row_test(rule, now_ms) {
                        Some(test) => tests.push(test),
                        None => acc = self.eval(rule, now_ms, Some(&acc)),
                    }
                }
                if tests.is_empty() {
                    acc
                } else {
                    RoaringBitmap::from_sorted_iter(acc.iter().filter(|d| tests.iter().all(|test| test(*d))))
                        .expect("a bitmap iterates in order")
                }
            }
            Rule::Any(rules) => {
                let mut acc = RoaringBitmap::new();
                for rule in rules {
                    acc |= self.eval(rule, now_ms, within);
                }
                acc
            }
            Rule::Not(rule) => scope() - self.eval(rule, now_ms, within),
            Rule::InList(list) => self.lists.get(list).cloned().unwrap_or_default(),
            Rule::Engaged(engagement) => self.engaged(engagement, now_ms),
            Rule::Behavior(behavior) => self.behavior(behavior, now_ms),
            Rule::Compare { field, op, value } => self.compare(field, *op, value, now_ms, &scope()),
            Rule::In { field, values } => {
                let mut acc = RoaringBitmap::new();
                for value in values {
                    acc |= self.compare(field, Op::Eq, value, now_ms, &scope());
                }
                acc
            }
            Rule::Contains { field, text } => self.text_match(field, &scope(), |s| s.contains(&text.to_lowercase())),
            Rule::StartsWith { field, text } => {
                self.text_match(field, &scope(), |s| s.starts_with(&text.to_lowercase()))
            }
            Rule::Exists { field } => match field {
                Field::Email => self.emails.non_empty(&scope()),
                Field::DisplayName => self.names.non_empty(&scope()),
                Field::Status | Field::CreatedAt => scope(),
                Field::Attribute(key) => self.attributes.get(key).map(Attribute::present).unwrap_or_default(),
            },
        };
        result &= within.unwrap_or(&self.alive);
        result
    }

    /// A per-row test for a value comparison, for fused scans; `None` for
    /// conditions that are bitmaps (or not comparisons).
    fn row_test(&self, rule: &Rule, now_ms: i64) -> Option<Box<dyn Fn(u32) -> bool + '_>> {
        match rule {
            Rule::Compare { field, op: Op::Ne, value } => {
                let equal = self.value_test(field, Op::Eq, value, now_ms)?;
                Some(Box::new(move |d| !equal(d)))
            }
            Rule::Compare { field, op, value } => self.value_test(field, *op, value, now_ms),
            Rule::In { field, values } if !matches!(field, Field::Status) => {
                let tests: Vec<_> =
                    values.iter().map(|v| self.value_test(field, Op::Eq, v, now_ms)).collect::<Option<_>>()?;
                Some(Box::new(move |d| tests.iter().any(|t| t(d))))
            }
            _ => None,
        }
    }

    fn value_test(&self, field: &Field, op: Op, value: &Value, now_ms: i64) -> Option<Box<dyn Fn(u32) -> bool + '_>> {
        Some(match (field, value) {
            (Field::Status, _) => return None,
            (Field::CreatedAt, Value::Ago(seconds)) => {
                let bound = now_ms - seconds * 1000;
                Box::new(move |d| op.holds(&self.created[d as usize], &bound))
            }
            (Field::CreatedAt, Value::At(bound)) => {
                let bound = *bound;
                Box::new(move |d| op.holds(&self.created[d as usize], &bound))
            }
            (Field::Email, Value::Text(text)) => {
                let text = text.to_lowercase();
                Box::new(move |d| op.holds(&self.emails.get(d), &text.as_str()))
            }
            (Field::DisplayName, Value::Text(text)) => {
                let text = text.clone();
                Box::new(move |d| op.holds(&self.names.get(d), &text.as_str()))
            }
            (Field::Attribute(key), value) => match self.attributes.get(key) {
                Some(attribute) => attribute.row_test(op, value)?,
                None => Box::new(|_| false),
            },
            _ => Box::new(|_| false),
        })
    }

    fn compare(&self, field: &Field, op: Op, value: &Value, now_ms: i64, scope: &RoaringBitmap) -> RoaringBitmap {
        if op == Op::Ne {
            return scope - self.compare(field, Op::Eq, value, now_ms, scope);
        }
        match (field, value) {
            (Field::Status, Value::Text(status)) => {
                STATUSES.iter().position(|s| s == status).map(|i| self.statuses[i].clone()).unwrap_or_default()
            }
            (Field::CreatedAt, Value::Ago(_) | Value::At(_)) => {
                let bound = match value {
                    Value::Ago(seconds) => now_ms - seconds * 1000,
                    Value::At(ms) => *ms,
                    _ => unreachable!("matched above"),
                };
                columns::sorted(scope.iter().filter(|d| op.holds(&self.created[*d as usize], &bound)))
            }
            (Field::Email, Value::Text(text)) => {
                self.emails.matching(scope, |s| op.holds(&s, &text.to_lowercase().as_str()))
            }
            (Field::DisplayName, Value::Text(text)) => self.names.matching(scope, |s| op.holds(&s, &text.as_str())),
            (Field::Attribute(key), value) => {
                self.attributes.get(key).map(|a| a.compare(op, value, scope)).unwrap_or_default()
            }
            _ => RoaringBitmap::new(),
        }
    }

    fn text_match(&self, field: &Field, scope: &RoaringBitmap, test: impl Fn(&str) -> bool) -> RoaringBitmap {
        match field {
            Field::Email => self.emails.matching(scope, |s| test(s)),
            Field::DisplayName => self.names.matching(scope, |s| test(&s.to_lowercase())),
            Field::Attribute(key) => {
                self.attributes.get(key).map(|a| a.text_matching(scope, &test)).unwrap_or_default()
            }
            Field::Status => STATUSES
                .iter()
                .enumerate()
                .filter(|(_, s)| test(s))
                .fold(RoaringBitmap::new(), |acc, (i, _)| acc | &self.statuses[i]),
            Field::CreatedAt => RoaringBitmap::new(),
        }
    }

    fn engaged(&self, engagement: &Engagement, now_ms: i64) -> RoaringBitmap {
        let activity = engagement.activity.index();
        let campaign = match &engagement.campaign {
            Some(campaign) => match self.campaigns.get(campaign) {
                Some(code) => Some(*code),
                None => return self.none_engaged(engagement),
            },
            None => None,
        };
        // The common case, "did it at all": a bitmap.
        if engagement.within.is_none() && engagement.count == (Op::Ge, 1) {
            return match campaign {
                Some(code) => self.ever_in.get(&(activity, code)).cloned().unwrap_or_default(),
                None => self.ever[activity].clone(),
            };
        }
        let since = engagement.within.map(|seconds| ((now_ms / 1000) - seconds).clamp(0, u32::MAX as i64) as u32);
        let days = match since {
            Some(since) => self.events[activity].range(since / DAY..),
            None => self.events[activity].range(..),
        };
        let in_window = |e: &&Event| since.is_none_or(|s| e.time >= s) && campaign.is_none_or(|c| c == e.campaign);
        // "At least once in the window": whole days are bitmap unions; only the first day is filtered by time.
        if engagement.count == (Op::Ge, 1) && campaign.is_none() {
            let mut first_day = RoaringBitmap::new();
            let mut whole_days = Vec::new();
            for (number, day) in days {
                if since.is_some_and(|s| *number == s / DAY) {
                    first_day.extend(day.events.iter().filter(in_window).map(|e| e.subscriber));
                } else {
                    whole_days.push(&day.members);
                }
            }
            // One multi-way union: pairwise `|=` would re-merge the growing result for every day.
            return whole_days.into_iter().chain(std::iter::once(&first_day)).union();
        }
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for event in days.flat_map(|(_, day)| day.events.iter()).filter(in_window) {
            *counts.entry(event.subscriber).or_default() += 1;
        }
        let (op, n) = engagement.count;
        let mut matched: RoaringBitmap = counts.iter().filter(|(_, c)| op.holds(*c, &n)).map(|(s, _)| *s).collect();
        if op.holds(&0, &n) {
            // "count < 2" also holds for those with no event at all.
            let with_events: RoaringBitmap = counts.keys().copied().collect();
            matched |= &self.alive - with_events;
        }
        matched
    }

    /// A campaign nobody engaged with: only a count that holds at zero matches.
    fn none_engaged(&self, engagement: &Engagement) -> RoaringBitmap {
        let (op, n) = engagement.count;
        if op.holds(&0, &n) { self.alive.clone() } else { RoaringBitmap::new() }
    }
}

/// Conditions answered from bitmaps alone.
fn is_cheap(rule: &Rule) -> bool {
    match rule {
        Rule::InList(_) => true,
        Rule::Compare { field: Field::Status, .. } | Rule::In { field: Field::Status, .. } => true,
        Rule::Exists { field: Field::Attribute(_) } => true,
        Rule::Engaged(e) => e.count == (Op::Ge, 1),
        Rule::Not(inner) => is_cheap(inner),
        Rule::All(rules) | Rule::Any(rules) => rules.iter().all(is_cheap),
        _ => false,
    }
}
