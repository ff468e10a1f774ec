//! Column types of the projection: text in one arena, and typed attribute
//! columns (numbers, dictionary-coded text, booleans) filled only for the
//! types an attribute actually holds.

use std::collections::HashMap;

use roaring::RoaringBitmap;
use serde_json::Value as Json;

use crate::rule::{Op, Value};

/// A bitmap from ids in increasing order (appends, much faster than inserts).
pub(super) fn sorted(ids: impl Iterator<Item = u32>) -> RoaringBitmap {
    RoaringBitmap::from_sorted_iter(ids).expect("a bitmap iterates in order")
}

/// Strings by dense number, in one arena (8 bytes per row plus the text).
#[derive(Default)]
pub(super) struct TextColumn {
    arena: String,
    spans: Vec<(u32, u32)>,
    garbage: usize,
}

impl TextColumn {
    pub(super) fn get(&self, dense: u32) -> &str {
        match self.spans.get(dense as usize) {
            Some(&(start, len)) => &self.arena[start as usize..(start + len) as usize],
            None => "",
        }
    }

    pub(super) fn set(&mut self, dense: u32, text: &str) {
        if self.get(dense) == text {
            return;
        }
        if self.spans.len() <= dense as usize {
            self.spans.resize(dense as usize + 1, (0, 0));
        }
        self.garbage += self.spans[dense as usize].1 as usize;
        if self.garbage > 1 << 20 && self.garbage > self.arena.len() / 2 {
            self.compact();
        }
        let start = self.arena.len() as u32;
        self.arena.push_str(text);
        self.spans[dense as usize] = (start, text.len() as u32);
    }

    fn compact(&mut self) {
        let mut arena = String::with_capacity(self.arena.len() - self.garbage);
        for span in &mut self.spans {
            let text = &self.arena[span.0 as usize..(span.0 + span.1) as usize];
            *span = (arena.len() as u32, span.1);
            arena.push_str(text);
        }
        self.arena = arena;
        self.garbage = 0;
    }

    pub(super) fn shrink(&mut self) {
        self.arena.shrink_to_fit();
        self.spans.shrink_to_fit();
    }

    pub(super) fn matching(&self, scope: &RoaringBitmap, test: impl Fn(&str) -> bool) -> RoaringBitmap {
        sorted(scope.iter().filter(|d| test(self.get(*d))))
    }

    pub(super) fn non_empty(&self, scope: &RoaringBitmap) -> RoaringBitmap {
        self.matching(scope, |s| !s.is_empty())
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.arena.capacity() + self.spans.capacity() * 8
    }
}

/// One attribute across subscribers.
#[derive(Default)]
pub(super) struct Attribute {
    present: RoaringBitmap,
    /// NaN where the value is not a number.
    numbers: Vec<f64>,
    /// Dictionary codes, 0 where the value is not text.
    texts: Vec<u32>,
    dictionary: Vec<Box<str>>,
    codes: HashMap<Box<str>, u32>,
    trues: RoaringBitmap,
    falses: RoaringBitmap,
    /// Members per dictionary code while there are few codes (country, plan,
    /// language...): `=` and `in` are then bitmap operations, not scans.
    /// Dropped for good once the attribute has more than [`MAX_CODE_BITMAPS`] values.
    by_code: Option<Vec<RoaringBitmap>>,
    many_values: bool,
}

/// Distinct text values an attribute may have and still keep one bitmap per value.
const MAX_CODE_BITMAPS: usize = 256;

impl Attribute {
    pub(super) fn clear(&mut self, dense: u32) {
        if !self.present.remove(dense) {
            return;
        }
        if let Some(n) = self.numbers.get_mut(dense as usize) {
            *n = f64::NAN;
        }
        if let Some(code) = self.texts.get_mut(dense as usize) {
            if let Some(by_code) = self.by_code.as_mut()
                && let Some(members) = by_code.get_mut(*code as usize)
            {
                members.remove(dense);
            }
            *code = 0;
        }
        self.trues.remove(dense);
        self.falses.remove(dense);
    }

    pub(super) fn set(&mut self, dense: u32, value: &Json) {
        self.clear(dense);
        self.present.insert(dense);
        let at = dense as usize;
        match value {
            Json::Number(n) => {
                if self.numbers.len() <= at {
                    self.numbers.resize(at + 1, f64::NAN);
                }
                self.numbers[at] = n.as_f64().unwrap_or(f64::NAN);
            }
            Json::String(text) => {
                if self.texts.len() <= at {
                    self.texts.resize(at + 1, 0);
                }
                let next = self.dictionary.len() as u32 + 1;
                let code = *self.codes.entry(text.as_str().into()).or_insert_with(|| next);
                if code == next {
                    self.dictionary.push(text.as_str().into());
                }
                self.texts[at] = code;
                if self.dictionary.len() > MAX_CODE_BITMAPS {
                    self.many_values = true;
                    self.by_code = None;
                } else if self.by_code.is_none() && !self.many_values {
                    self.by_code = Some(Vec::new());
                }
                if let Some(by_code) = self.by_code.as_mut() {
                    if by_code.len() <= code as usize {
                        by_code.resize(code as usize + 1, RoaringBitmap::new());
                    }
                    by_code[code as usize].insert(dense);
                }
            }
            Json::Bool(true) => {
                self.trues.insert(dense);
            }
            Json::Bool(false) => {
                self.falses.insert(dense);
            }
            // Null, arrays and objects: present, but no comparison matches them.
            _ => {}
        }
    }

    pub(super) fn shrink(&mut self) {
        self.numbers.shrink_to_fit();
        self.texts.shrink_to_fit();
    }

    pub(super) fn present(&self) -> RoaringBitmap {
        self.present.clone()
    }

    fn number(&self, dense: u32) -> f64 {
        self.numbers.get(dense as usize).copied().unwrap_or(f64::NAN)
    }

    fn code(&self, dense: u32) -> u32 {
        self.texts.get(dense as usize).copied().unwrap_or(0)
    }

    /// Codes (as a lookup table) whose text passes `test`.
    fn codes_where(&self, test: impl Fn(&str) -> bool) -> Vec<bool> {
        std::iter::once(false).chain(self.dictionary.iter().map(|t| test(t))).collect()
    }

    fn scan_codes(&self, scope: &RoaringBitmap, wanted: &[bool]) -> RoaringBitmap {
        if !wanted.contains(&true) {
            return RoaringBitmap::new();
        }
        sorted(scope.iter().filter(|d| wanted[self.code(*d) as usize]))
    }

    /// Rows of `scope` whose value `op` `value` (`Ne` is handled by the caller).
    pub(super) fn compare(&self, op: Op, value: &Value, scope: &RoaringBitmap) -> RoaringBitmap {
        match value {
            Value::Number(n) => {
                if self.numbers.is_empty() {
                    return RoaringBitmap::new();
                }
                sorted(scope.iter().filter(|d| {
                    let v = self.number(*d);
                    !v.is_nan() && op.holds(&v, n)
                }))
            }
            Value::Text(text) => {
                if op == Op::Eq {
                    let Some(code) = self.codes.get(text.as_str()) else { return RoaringBitmap::new() };
                    let code = *code;
                    if let Some(members) = self.by_code.as_ref().and_then(|b| b.get(code as usize)) {
                        return members & scope;
                    }
                    return sorted(scope.iter().filter(|d| self.code(*d) == code));
                }
                self.scan_codes(scope, &self.codes_where(|t| op.holds(&t, &text.as_str())))
            }
            Value::Bool(b) => match op {
                Op::Eq => (if *b { &self.trues } else { &self.falses }) & scope,
                _ => RoaringBitmap::new(),
            },
            Value::Ago(_) | Value::At(_) => RoaringBitmap::new(),
        }
    }

    /// The same comparison as [`Self::compare`], one row at a time (`None`: use `compare`).
    pub(super) fn row_test(&self, op: Op, value: &Value) -> Option<Box<dyn Fn(u32) -> bool + '_>> {
        Some(match value {
            Value::Number(n) => {
                let n = *n;
                Box::new(move |d| {
                    let v = self.number(d);
                    !v.is_nan() && op.holds(&v, &n)
                })
            }
            // With a bitmap per value, `=` is an intersection: let `compare` do it.
            Value::Text(_) if op == Op::Eq && self.by_code.is_some() => return None,
            Value::Text(text) if op == Op::Eq => match self.codes.get(text.as_str()) {
                Some(code) => {
                    let code = *code;
                    Box::new(move |d| self.code(d) == code)
                }
                None => Box::new(|_| false),
            },
            Value::Text(text) => {
                let wanted = self.codes_where(|t| op.holds(&t, &text.as_str()));
                Box::new(move |d| wanted[self.code(d) as usize])
            }
            _ => return None,
        })
    }

    /// Rows whose text value (lowercased) passes `test`.
    pub(super) fn text_matching(&self, scope: &RoaringBitmap, test: &dyn Fn(&str) -> bool) -> RoaringBitmap {
        self.scan_codes(scope, &self.codes_where(|t| test(&t.to_lowercase())))
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.present.serialized_size()
            + self.numbers.capacity() * 8
            + self.texts.capacity() * 4
            + self.dictionary.iter().map(|t| t.len() * 2 + 16 + 24).sum::<usize>()
            + self.trues.serialized_size()
            + self.falses.serialized_size()
            + self.by_code.iter().flatten().map(RoaringBitmap::serialized_size).sum::<usize>()
    }
}
