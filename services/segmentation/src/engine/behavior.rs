//! Behavioral events in the projection: per event name, events bucketed by
//! UTC day, each day a small column store (subscriber, time, one typed
//! column per property) plus the bitmap of who has an event that day.
//!
//! Windows are exact to the second: whole days inside a window are used
//! as they are, only the day the window starts in is filtered by time.
//! "Did it at all" is a union of day bitmaps; counts and sums are one pass
//! over the events in the window into dense per-subscriber accumulators
//! (the rolling aggregate of that window), then a threshold. Memory is
//! about 8 bytes per event plus 8 per numeric and 4 per text property
//! value (texts are dictionary-coded per event name); see docs/segments.md.

use std::collections::{BTreeMap, HashMap};

use roaring::{MultiOps, RoaringBitmap};
use serde_json::{Map, Value as Json};

use super::{DAY, Projection};
use crate::rule::{Behavior, Measure, Op, PropertyTest, Test, Value};

const NO_TEXT: u32 = u32::MAX;
const NO_BOOL: u8 = 2;

/// One property's values in one day, as long as the day's event list once present.
#[derive(Default)]
struct Column {
    numbers: Option<Vec<f64>>,
    texts: Option<Vec<u32>>,
    bools: Option<Vec<u8>>,
}

impl Column {
    fn push(&mut self, len: usize, value: Option<&Json>, dictionary: &mut Dictionary) {
        let (mut number, mut text, mut flag) = (f64::NAN, NO_TEXT, NO_BOOL);
        match value {
            Some(Json::Number(n)) => number = n.as_f64().unwrap_or(f64::NAN),
            Some(Json::String(s)) => text = dictionary.code(s),
            Some(Json::Bool(b)) => flag = u8::from(*b),
            _ => {}
        }
        // A kind seen for the first time starts with "missing" for the earlier events.
        if !number.is_nan() && self.numbers.is_none() {
            self.numbers = Some(vec![f64::NAN; len]);
        }
        if text != NO_TEXT && self.texts.is_none() {
            self.texts = Some(vec![NO_TEXT; len]);
        }
        if flag != NO_BOOL && self.bools.is_none() {
            self.bools = Some(vec![NO_BOOL; len]);
        }
        self.numbers.iter_mut().for_each(|v| v.push(number));
        self.texts.iter_mut().for_each(|v| v.push(text));
        self.bools.iter_mut().for_each(|v| v.push(flag));
    }

    fn number(&self, row: usize) -> Option<f64> {
        self.numbers.as_ref().map(|v| v[row]).filter(|n| !n.is_nan())
    }

    fn retain(&mut self, keep: &[bool]) {
        fn filter<T: Copy>(values: &mut Option<Vec<T>>, keep: &[bool]) {
            if let Some(values) = values {
                let mut i = 0;
                values.retain(|_| {
                    i += 1;
                    keep[i - 1]
                });
            }
        }
        filter(&mut self.numbers, keep);
        filter(&mut self.texts, keep);
        filter(&mut self.bools, keep);
    }

    fn heap_bytes(&self) -> usize {
        self.numbers.as_ref().map_or(0, |v| v.capacity() * 8)
            + self.texts.as_ref().map_or(0, |v| v.capacity() * 4)
            + self.bools.as_ref().map_or(0, |v| v.capacity())
    }
}

#[derive(Default)]
struct Dictionary {
    texts: Vec<String>,
    codes: HashMap<String, u32>,
}

impl Dictionary {
    fn code(&mut self, text: &str) -> u32 {
        if let Some(code) = self.codes.get(text) {
            return *code;
        }
        let code = self.texts.len() as u32;
        self.texts.push(text.to_owned());
        self.codes.insert(text.to_owned(), code);
        code
    }
}

/// One UTC day of one event name.
#[derive(Default)]
struct Day {
    subscribers: Vec<u32>,
    /// Seconds since the Unix epoch.
    times: Vec<u32>,
    members: RoaringBitmap,
    properties: HashMap<String, Column>,
}

/// Which rows of a day qualify.
enum Rows<'a> {
    All,
    Some(Box<dyn Iterator<Item = usize> + 'a>),
}

/// Every retained event of one name.
#[derive(Default)]
pub(super) struct EventLog {
    days: BTreeMap<u32, Day>,
    dictionary: Dictionary,
}

/// A compiled `where:` condition for one day: a test per row.
struct RowFilter<'a> {
    tests: Vec<(&'a Test, Option<&'a Column>, &'a [bool])>,
}

impl<'a> RowFilter<'a> {
    fn new(filter: &'a [PropertyTest], day: &'a Day, text_results: &'a [Vec<bool>]) -> Self {
        let tests = filter
            .iter()
            .zip(text_results)
            .map(|(test, texts)| (&test.test, day.properties.get(&test.property), texts.as_slice()))
            .collect();
        Self { tests }
    }

    fn passes(&self, row: usize) -> bool {
        self.tests.iter().all(|(test, column, texts)| {
            let Some(column) = column else { return test.holds(None) };
            if let Some(n) = column.number(row) {
                return test.holds(Some(&Json::from(n)));
            }
            if let Some(code) = column.texts.as_ref().map(|v| v[row]).filter(|c| *c != NO_TEXT) {
                return texts[code as usize];
            }
            if let Some(flag) = column.bools.as_ref().map(|v| v[row]).filter(|f| *f != NO_BOOL) {
                return test.holds(Some(&Json::Bool(flag == 1)));
            }
            test.holds(None)
        })
    }
}

impl EventLog {
    fn push(&mut self, subscriber: u32, time: u32, properties: &Map<String, Json>) {
        let day = self.days.entry(time / DAY).or_default();
        let len = day.subscribers.len();
        day.subscribers.push(subscriber);
        day.times.push(time);
        day.members.insert(subscriber);
        for key in properties.keys() {
            day.properties.entry(key.clone()).or_default();
        }
        for (key, column) in &mut day.properties {
            column.push(len, properties.get(key), &mut self.dictionary);
        }
    }

    fn erase(&mut self, subscriber: u32) {
        for day in self.days.values_mut() {
            if !day.members.remove(subscriber) {
                continue;
            }
            let keep: Vec<bool> = day.subscribers.iter().map(|s| *s != subscriber).collect();
            let mut i = 0;
            day.subscribers.retain(|_| {
                i += 1;
                keep[i - 1]
            });
            let mut i = 0;
            day.times.retain(|_| {
                i += 1;
                keep[i - 1]
            });
            day.properties.values_mut().for_each(|c| c.retain(&keep));
        }
        self.days.retain(|_, day| !day.subscribers.is_empty());
    }

    fn heap_bytes(&self) -> usize {
        self.days
            .values()
            .map(|d| {
                d.subscribers.capacity() * 4
                    + d.times.capacity() * 4
                    + d.members.serialized_size()
                    + d.properties.values().map(Column::heap_bytes).sum::<usize>()
                    + 64
            })
            .sum::<usize>()
            + self.dictionary.texts.iter().map(|t| t.len() * 2 + 40).sum::<usize>()
    }

    /// Per `where:` test, whether each dictionary text passes it.
    fn text_results(&self, filter: &[PropertyTest]) -> Vec<Vec<bool>> {
        filter
            .iter()
            .map(|t| self.dictionary.texts.iter().map(|s| t.test.holds(Some(&Json::String(s.clone())))).collect())
            .collect()
    }

    /// Calls `visit(day, rows)` for every day with events at or after `since`:
    /// `Rows::All` when every event of the day qualifies (the tight loop),
    /// else the qualifying rows.
    fn each_day<'a>(
        &'a self,
        since: Option<u32>,
        filter: &'a [PropertyTest],
        mut visit: impl FnMut(&'a Day, Rows<'_>),
    ) {
        let texts = self.text_results(filter);
        let days = match since {
            Some(since) => self.days.range(since / DAY..),
            None => self.days.range(..),
        };
        for (number, day) in days {
            let cutoff = since.filter(|s| *number == s / DAY);
            if filter.is_empty() && cutoff.is_none() {
                visit(day, Rows::All);
                continue;
            }
            let tests = RowFilter::new(filter, day, &texts);
            let rows = (0..day.times.len())
                .filter(|row| cutoff.is_none_or(|c| day.times[*row] >= c) && (filter.is_empty() || tests.passes(*row)));
            visit(day, Rows::Some(Box::new(rows)));
        }
    }

    /// Who has an event at or after `since` (all retained events without it):
    /// whole days are their bitmaps, partly matching days add their rows.
    fn anyone_since(&self, since: Option<u32>, filter: &[PropertyTest]) -> RoaringBitmap {
        let (mut whole_days, mut rows_matched) = (Vec::new(), RoaringBitmap::new());
        self.each_day(since, filter, |day, rows| match rows {
            Rows::All => whole_days.push(&day.members),
            Rows::Some(rows) => rows_matched.extend(rows.map(|row| day.subscribers[row])),
        });
        // One multi-way union: pairwise `|=` would re-merge the growing result for every day.
        whole_days.into_iter().chain(std::iter::once(&rows_matched)).union()
    }
}

impl Projection {
    /// Records one behavioral event at `time_ms`.
    pub fn track(&mut self, id: &str, name: &str, time_ms: i64, properties: &Map<String, Json>) {
        let Some(dense) = self.dense(id) else { return };
        let time = (time_ms / 1000).clamp(0, u32::MAX as i64) as u32;
        self.behaviors.entry(name.to_owned()).or_default().push(dense, time, properties);
    }

    /// Drops the days of events that happened before `before_ms` (whole UTC days).
    pub fn expire_behavior(&mut self, before_ms: i64) {
        let first_kept = ((before_ms / 1000).max(0) as u32) / DAY;
        for log in self.behaviors.values_mut() {
            log.days = log.days.split_off(&first_kept);
        }
    }

    pub(super) fn shrink_behavior(&mut self) {
        for day in self.behaviors.values_mut().flat_map(|log| log.days.values_mut()) {
            day.subscribers.shrink_to_fit();
            day.times.shrink_to_fit();
            for column in day.properties.values_mut() {
                column.numbers.iter_mut().for_each(|v| v.shrink_to_fit());
                column.texts.iter_mut().for_each(|v| v.shrink_to_fit());
                column.bools.iter_mut().for_each(|v| v.shrink_to_fit());
            }
        }
    }

    pub(super) fn erase_behavior(&mut self, dense: u32) {
        self.behaviors.values_mut().for_each(|log| log.erase(dense));
    }

    /// Estimated heap bytes of the behavioral events (part of `heap_bytes`).
    pub fn behavior_bytes(&self) -> usize {
        self.behaviors.values().map(EventLog::heap_bytes).sum()
    }

    /// Behavioral events held.
    pub fn behavior_events(&self) -> usize {
        self.behaviors.values().flat_map(|log| log.days.values()).map(|day| day.times.len()).sum()
    }

    pub(super) fn behavior(&self, b: &Behavior, now_ms: i64) -> RoaringBitmap {
        let since = b.within.map(|seconds| ((now_ms / 1000) - seconds).clamp(0, u32::MAX as i64) as u32);
        let Some(log) = self.behaviors.get(&b.event) else {
            // Nobody did it: only thresholds that hold at zero match.
            let zero = match &b.measure {
                Measure::Count(op, n) => op.holds(&0, n),
                Measure::Sum { op, value, .. } => op.holds(&0.0, value),
                Measure::Last { .. } => false,
            };
            return if zero { self.alive.clone() } else { RoaringBitmap::new() };
        };
        match &b.measure {
            Measure::Count(Op::Ge, 1) => log.anyone_since(since, &b.filter),
            Measure::Count(op, n) => {
                let mut counts = vec![0u32; self.ids.len()];
                log.each_day(since, &b.filter, |day, rows| match rows {
                    Rows::All => day.subscribers.iter().for_each(|s| counts[*s as usize] += 1),
                    Rows::Some(rows) => rows.for_each(|row| counts[day.subscribers[row] as usize] += 1),
                });
                // In dense order, so the bitmap is built without sorting; zero counts test like any other.
                let matched = (0..counts.len() as u32).filter(|s| op.holds(&counts[*s as usize], n));
                RoaringBitmap::from_sorted_iter(matched).expect("ascending") & &self.alive
            }
            Measure::Sum { property, op, value } => {
                let mut sums = vec![0f64; self.ids.len()];
                log.each_day(since, &b.filter, |day, rows| {
                    let Some(numbers) = day.properties.get(property).and_then(|c| c.numbers.as_deref()) else {
                        return;
                    };
                    let mut add = |row: usize| {
                        let n = numbers[row];
                        if !n.is_nan() {
                            sums[day.subscribers[row] as usize] += n;
                        }
                    };
                    match rows {
                        Rows::All => (0..numbers.len()).for_each(&mut add),
                        Rows::Some(rows) => rows.for_each(add),
                    }
                });
                let matched = (0..sums.len() as u32).filter(|s| op.holds(&sums[*s as usize], value));
                RoaringBitmap::from_sorted_iter(matched).expect("ascending") & &self.alive
            }
            Measure::Last { op, value } => {
                let bound_ms = match value {
                    Value::Ago(seconds) => now_ms - seconds * 1000,
                    Value::At(ms) => *ms,
                    _ => return RoaringBitmap::new(),
                };
                // Event times are whole seconds: t*1000 > bound  <=>  t >= floor(bound/1000) + 1.
                let at_or_after = |strict: bool| {
                    let first = bound_ms.div_euclid(1000) + i64::from(strict || bound_ms.rem_euclid(1000) != 0);
                    let first = first.clamp(0, u32::MAX as i64) as u32;
                    log.anyone_since(Some(since.map_or(first, |s| s.max(first))), &b.filter)
                };
                match op {
                    Op::Gt => at_or_after(true),
                    Op::Ge => at_or_after(false),
                    Op::Lt => log.anyone_since(since, &b.filter) - at_or_after(false),
                    Op::Le => log.anyone_since(since, &b.filter) - at_or_after(true),
                    _ => RoaringBitmap::new(),
                }
            }
        }
    }
}
