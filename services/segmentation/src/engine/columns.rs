//! Column types of the projection: text in one arena, and typed attribute
//! columns (numbers, dictionary-coded text, booleans) filled only for the
//! types an attribute actually holds.

use std::collections::HashMap;

use roaring::RoaringBitmap;
use serde_json::Value as Json;

use crate::rule::{Op, Value};

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
        scope.iter().filter(|d| test(self.get(*d))).collect()
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
}

impl Attribute {
    pub(super) fn clear(&mut self, dense: u32) {
        if !self.present.remove(dense) {
            return;
        }
        if let Some(n) = self.numbers.get_mut(dense as usize) {
            *n = f64::NAN;
        }
        if let Some(code) = self.texts.get_mut(dense as usize) {
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
        scope.iter().filter(|d| wanted[self.code(*d) as usize]).collect()
    }

    /// Rows of `scope` whose value `op` `value` (`Ne` is handled by the caller).
    pub(super) fn compare(&self, op: Op, value: &Value, scope: &RoaringBitmap) -> RoaringBitmap {
        match value {
            Value::Number(n) => {
                if self.numbers.is_empty() {
                    return RoaringBitmap::new();
                }
                scope.iter().filter(|d| {
                    let v = self.number(*d);
                    !v.is_nan() && op.holds(&v, n)
                }).collect()
            }
            Value::Text(text) => {
                if op == Op::Eq {
                    let Some(code) = self.codes.get(text.as_str()) else { return RoaringBitmap::new() };
                    let code = *code;
                    return scope.iter().filter(|d| self.code(*d) == code).collect();
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
    }
}
