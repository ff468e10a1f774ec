//! CSV parsing for imports, on a blocking thread fed by the gRPC stream.
//! Memory stays bounded: chunks and batches flow through small channels, a
//! line longer than [`MAX_LINE_BYTES`] stops the import, and duplicate
//! detection keeps 16 bytes per address.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io::Read;

use broadside_proto::ServiceError;
use broadside_store::{ImportRow, Subscriber, SubscriberStatus, new_id, normalize_email as unique_key};
use serde_json::Map;
use tokio::sync::mpsc;

use crate::validate::{AttributeType, MAX_DISPLAY_NAME, check_attributes, normalize_email, valid_key};

/// A row (record) longer than this is rejected with its line number.
pub const MAX_ROW_BYTES: usize = 64 * 1024;
/// More than this without a line break stops the import: it is not a CSV file
/// we can read in bounded memory.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
/// Rows per store transaction.
pub(crate) const BATCH_ROWS: usize = 5000;

/// What the parser hands to the writer.
pub(crate) enum Parsed {
    Batch {
        rows: Vec<ImportRow>,
        /// `(line, reason)` of rows rejected in this stretch.
        rejected: Vec<(u64, String)>,
        /// Every line up to here has been read.
        last_line: u64,
        /// Rows at or before the resumed job's last committed line, passed over.
        resumed: u64,
    },
    /// The file cannot be read further; what was committed stays.
    Fatal(ServiceError),
}

/// Where each field of a row goes.
enum Column {
    Email,
    Name,
    Attribute(String, AttributeType),
    Ignored,
}

/// Maps the header row to columns, or says what is wrong with it.
fn columns(header: &csv::ByteRecord) -> Result<Vec<Column>, ServiceError> {
    let bad = |message: String| ServiceError::invalid("header (line 1)", message);
    let mut columns = Vec::with_capacity(header.len());
    let mut seen = HashMap::new();
    let mut names = Vec::new();
    for (index, raw) in header.iter().enumerate() {
        let text = std::str::from_utf8(raw).map_err(|_| bad("is not valid UTF-8; save the file as UTF-8".into()))?;
        let text = text.trim().trim_start_matches('\u{feff}');
        names.push(text.to_owned());
        let (name, type_name) = text.split_once(':').unwrap_or((text, ""));
        let name = name.trim();
        let lower = name.to_ascii_lowercase();
        let column = match lower.as_str() {
            "email" | "e-mail" | "email_address" => Column::Email,
            "name" | "display_name" => Column::Name,
            "" => Column::Ignored,
            _ => {
                let kind = AttributeType::parse(type_name.trim()).ok_or_else(|| {
                    bad(format!(
                        "column {text:?}: unknown type {type_name:?} (use string, number, bool, timestamp or list)"
                    ))
                })?;
                if !valid_key(name) {
                    return Err(bad(format!(
                        "column {text:?}: attribute names are letters, digits and '_' and start with a letter or '_'"
                    )));
                }
                Column::Attribute(name.to_owned(), kind)
            }
        };
        if !matches!(column, Column::Ignored)
            && let Some(first) = seen.insert(lower.clone(), index)
        {
            return Err(bad(format!("column {name:?} appears twice (columns {} and {})", first + 1, index + 1)));
        }
        columns.push(column);
    }
    if !columns.iter().any(|c| matches!(c, Column::Email)) {
        return Err(bad(format!("no `email` column; the columns are: {}", names.join(", "))));
    }
    Ok(columns)
}

/// Turns one record into a subscriber, or the reason it is rejected.
fn row(tenant: &str, list_id: &str, columns: &[Column], record: &csv::ByteRecord) -> Result<Subscriber, String> {
    if record.as_slice().len() > MAX_ROW_BYTES {
        return Err(format!("row is {} bytes, the limit is {} KiB", record.as_slice().len(), MAX_ROW_BYTES / 1024));
    }
    if record.len() > columns.len() {
        return Err(format!("has {} fields, the header has {}", record.len(), columns.len()));
    }
    let mut email = None;
    let mut name = String::new();
    let mut attributes = Map::new();
    for (column, raw) in columns.iter().zip(record.iter()) {
        let text = std::str::from_utf8(raw)
            .map_err(|e| format!("not valid UTF-8 (byte {} of a field); save the file as UTF-8", e.valid_up_to()))?;
        match column {
            Column::Email => email = Some(text),
            Column::Name => name = text.trim().to_owned(),
            Column::Attribute(key, kind) if !text.trim().is_empty() => {
                let value = kind.convert(text).map_err(|reason| format!("{key}: {reason}"))?;
                attributes.insert(key.clone(), value);
            }
            Column::Attribute(..) | Column::Ignored => {}
        }
    }
    let email = email.filter(|e| !e.trim().is_empty()).ok_or("email: is empty")?;
    let email = normalize_email("email", email).map_err(|e| e.to_string())?;
    if name.chars().any(|c| matches!(c, '\r' | '\n' | '\0')) {
        return Err("name: must not contain line breaks or NUL".into());
    }
    if name.chars().count() > MAX_DISPLAY_NAME {
        return Err(format!("name: is longer than {MAX_DISPLAY_NAME} characters"));
    }
    check_attributes("attributes", &attributes).map_err(|e| e.to_string())?;
    Ok(Subscriber {
        tenant: tenant.to_owned(),
        id: new_id(),
        email,
        display_name: name,
        attributes,
        status: SubscriberStatus::Active,
        lists: vec![list_id.to_owned()],
        subscriptions: Vec::new(),
        create_time: 0,
        update_time: 0,
    })
}

/// 128-bit fingerprint of an address for duplicate detection: two
/// independently keyed SipHashes (a collision among 10^9 rows is ~10^-20 likely).
fn fingerprint(keys: &(RandomState, RandomState), email: &str) -> u128 {
    let key = unique_key(email);
    (u128::from(keys.0.hash_one(&key)) << 64) | u128::from(keys.1.hash_one(&key))
}

/// Reads chunks from the gRPC stream as one byte stream, refusing a line
/// longer than [`MAX_LINE_BYTES`].
pub(crate) struct ChunkReader {
    chunks: mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    position: usize,
    since_newline: usize,
}

impl ChunkReader {
    pub(crate) fn new(chunks: mpsc::Receiver<Vec<u8>>) -> Self {
        Self { chunks, current: Vec::new(), position: 0, since_newline: 0 }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        while self.position == self.current.len() {
            match self.chunks.blocking_recv() {
                Some(chunk) => (self.current, self.position) = (chunk, 0),
                None => return Ok(0),
            }
        }
        let n = buffer.len().min(self.current.len() - self.position);
        let slice = &self.current[self.position..self.position + n];
        match slice.iter().rposition(|&b| b == b'\n') {
            Some(last) => self.since_newline = n - last - 1,
            None => self.since_newline += n,
        }
        if self.since_newline > MAX_LINE_BYTES {
            return Err(std::io::Error::other(format!(
                "a line is longer than {} MiB; is this a CSV file with one row per line?",
                MAX_LINE_BYTES / (1024 * 1024)
            )));
        }
        buffer[..n].copy_from_slice(slice);
        self.position += n;
        Ok(n)
    }
}

/// Parses the whole stream, sending batches to `out`. `resume_after` skips
/// rows already committed by an earlier run under the same request id.
pub(crate) fn parse(
    reader: ChunkReader,
    tenant: &str,
    list_id: &str,
    resume_after: u64,
    out: mpsc::Sender<Parsed>,
) -> Result<(), ServiceError> {
    let mut reader = reader;
    let mut first = [0u8; 2];
    let mut peeked = 0;
    while peeked < 2 {
        match reader.read(&mut first[peeked..]) {
            Ok(0) => break,
            Ok(n) => peeked += n,
            Err(error) => return Err(ServiceError::invalid("chunk", error.to_string())),
        }
    }
    if peeked == 2 && (first == [0xff, 0xfe] || first == [0xfe, 0xff]) {
        return Err(ServiceError::invalid(
            "chunk",
            "the file is UTF-16; save it as UTF-8 (CSV UTF-8) and import again",
        ));
    }
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(std::io::Cursor::new(first[..peeked].to_vec()).chain(reader));
    let mut record = csv::ByteRecord::new();
    let fatal = |error: csv::Error| ServiceError::invalid("chunk", format!("cannot read the CSV: {error}"));
    if !csv.read_byte_record(&mut record).map_err(fatal)? {
        return Err(ServiceError::invalid(
            "chunk",
            "the file is empty; the first line must be a header with an `email` column",
        ));
    }
    let columns = columns(&record)?;
    let mut seen: HashMap<u128, u64> = HashMap::new();
    let keys = (RandomState::new(), RandomState::new());
    let (mut rows, mut rejected, mut resumed) = (Vec::with_capacity(BATCH_ROWS), Vec::new(), 0u64);
    let mut last_line = 1;
    loop {
        match csv.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(error) => {
                let line = error.position().map_or(last_line + 1, |p| p.line());
                let error =
                    ServiceError::invalid("chunk", format!("line {line}: {error}; lines before it were imported"));
                let _ = out.blocking_send(Parsed::Batch { rows, rejected, last_line, resumed });
                let _ = out.blocking_send(Parsed::Fatal(error));
                return Ok(());
            }
        }
        let line = record.position().map_or(last_line + 1, |p| p.line());
        last_line = line;
        if record.len() == 1 && record.as_slice().trim_ascii().is_empty() {
            continue; // blank line
        }
        match row(tenant, list_id, &columns, &record) {
            Ok(subscriber) => {
                let print = fingerprint(&keys, &subscriber.email);
                if let Some(first) = seen.insert(print, line) {
                    seen.insert(print, first);
                    if line > resume_after {
                        rejected.push((line, format!("email: {:?} already appears on line {first}", subscriber.email)));
                    }
                } else if line <= resume_after {
                    resumed += 1;
                } else {
                    rows.push(ImportRow { line, subscriber });
                }
            }
            Err(reason) if line > resume_after => rejected.push((line, reason)),
            Err(_) => {}
        }
        if rows.len() >= BATCH_ROWS || rejected.len() >= BATCH_ROWS {
            let batch = Parsed::Batch {
                rows: std::mem::replace(&mut rows, Vec::with_capacity(BATCH_ROWS)),
                rejected: std::mem::take(&mut rejected),
                last_line,
                resumed: std::mem::take(&mut resumed),
            };
            if out.blocking_send(batch).is_err() {
                return Ok(()); // the writer stopped (it reports why)
            }
        }
    }
    let _ = out.blocking_send(Parsed::Batch { rows, rejected, last_line, resumed });
    Ok(())
}
