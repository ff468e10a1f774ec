//! CSV parsing for imports, on a blocking thread fed by the gRPC stream.
//! Memory stays bounded: chunks and batches flow through small channels, a
//! row longer than [`MAX_LINE_BYTES`] stops the import, and duplicate
//! detection keeps 16 bytes per address.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::io::Read;
use std::rc::Rc;

use broadside_proto::ServiceError;
use broadside_store::{ImportRow, Subscriber, SubscriberStatus, new_id, normalize_email as unique_key};
use serde_json::Map;
use tokio::sync::mpsc;

use crate::validate::{AttributeType, check_attributes, check_display_name, normalize_email, valid_key};

/// A row (record) longer than this is rejected with its line number.
pub const MAX_ROW_BYTES: usize = 64 * 1024;
/// A row (record, which may span lines inside quotes) growing past this
/// stops the import: it is not a CSV file we can read in bounded memory.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;
/// Rows per store transaction.
pub(crate) const BATCH_ROWS: usize = 20_000;

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
    check_display_name("name", &name).map_err(|e| e.to_string())?;
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

/// Reads chunks from the gRPC stream as one byte stream. A broken client
/// stream arrives as `Err` and reads as an I/O error, never as the end of
/// the file: a cut-off last line must not be imported as if it were whole.
pub(crate) struct ChunkReader {
    chunks: mpsc::Receiver<Result<Vec<u8>, String>>,
    current: Vec<u8>,
    position: usize,
}

impl ChunkReader {
    pub(crate) fn new(chunks: mpsc::Receiver<Result<Vec<u8>, String>>) -> Self {
        Self { chunks, current: Vec::new(), position: 0 }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        while self.position == self.current.len() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => (self.current, self.position) = (chunk, 0),
                Some(Err(reason)) => return Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, reason)),
                None => return Ok(0),
            }
        }
        let n = buffer.len().min(self.current.len() - self.position);
        buffer[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

/// What the reader and the parse loop share: where line breaks are (the csv
/// crate miscounts lines in CRLF files) and where the last record ended.
#[derive(Default)]
struct Lines {
    /// Offsets of `\n` bytes read but not yet passed by a record start.
    newlines: VecDeque<u64>,
    /// Line breaks before the oldest entry of `newlines`.
    passed: u64,
    /// Byte offset where the last complete record ended.
    record_end: u64,
}

impl Lines {
    /// 1-based line of a record starting at byte `start`. A line break at
    /// `start` itself counts as passed: after a CRLF the csv crate reports
    /// the record as starting at the LF.
    fn line_at(&mut self, start: u64) -> u64 {
        while self.newlines.front().is_some_and(|&offset| offset <= start) {
            self.newlines.pop_front();
            self.passed += 1;
        }
        self.passed + 1
    }
}

/// Counts line breaks as bytes pass, and stops a record that grows past
/// [`MAX_LINE_BYTES`] before the csv reader buffers it whole.
struct Tracked<R> {
    inner: R,
    offset: u64,
    /// A CR whose next byte is not read yet.
    pending_cr: Option<u64>,
    lines: Rc<RefCell<Lines>>,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buffer)?;
        let mut lines = self.lines.borrow_mut();
        // A line ends at LF, at CRLF (counted at the LF) and at a bare CR
        // (old Mac files), as the csv reader's record terminators do.
        for (index, &byte) in buffer[..n].iter().enumerate() {
            let offset = self.offset + index as u64;
            if let Some(cr) = self.pending_cr.take()
                && byte != b'\n'
            {
                lines.newlines.push_back(cr);
            }
            match byte {
                b'\n' => lines.newlines.push_back(offset),
                b'\r' => self.pending_cr = Some(offset),
                _ => {}
            }
        }
        if n == 0
            && let Some(cr) = self.pending_cr.take()
        {
            lines.newlines.push_back(cr);
        }
        self.offset += n as u64;
        if self.offset - lines.record_end > MAX_LINE_BYTES as u64 {
            return Err(std::io::Error::other(format!(
                "a row is longer than {} MiB; is this a CSV file with one row per line?",
                MAX_LINE_BYTES / (1024 * 1024)
            )));
        }
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
    let lines = Rc::new(RefCell::new(Lines::default()));
    let tracked = Tracked {
        inner: std::io::Cursor::new(first[..peeked].to_vec()).chain(reader),
        offset: 0,
        pending_cr: None,
        lines: lines.clone(),
    };
    let mut csv = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(tracked);
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
                let line = lines.borrow_mut().line_at(csv.position().byte());
                let error =
                    ServiceError::invalid("chunk", format!("line {line}: {error}; lines before it were imported"));
                let _ = out.blocking_send(Parsed::Batch { rows, rejected, last_line, resumed });
                let _ = out.blocking_send(Parsed::Fatal(error));
                return Ok(());
            }
        }
        let line = {
            let mut lines = lines.borrow_mut();
            lines.record_end = csv.position().byte();
            record.position().map_or(last_line + 1, |p| lines.line_at(p.byte()))
        };
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Parses `data` split into `chunk`-byte pieces; returns accepted rows,
    /// rejections, and a fatal error if any.
    fn run(data: &[u8], chunk: usize) -> (Vec<ImportRow>, Vec<(u64, String)>, Option<ServiceError>) {
        run_stream(data, chunk, false)
    }

    /// Like `run`; with `broken`, the client stream fails after the data instead of ending.
    fn run_stream(
        data: &[u8],
        chunk: usize,
        broken: bool,
    ) -> (Vec<ImportRow>, Vec<(u64, String)>, Option<ServiceError>) {
        let (chunk_tx, chunk_rx) = mpsc::channel(data.len() + 2);
        for piece in data.chunks(chunk.max(1)) {
            chunk_tx.try_send(Ok(piece.to_vec())).expect("room for every chunk");
        }
        if broken {
            chunk_tx.try_send(Err("reset".into())).expect("room for the error");
        }
        drop(chunk_tx);
        let (out_tx, mut out_rx) = mpsc::channel(1024);
        let result = std::thread::spawn(move || parse(ChunkReader::new(chunk_rx), "t", "l", 0, out_tx))
            .join()
            .expect("the parser must not panic");
        let (mut rows, mut rejected, mut fatal) = (Vec::new(), Vec::new(), result.err());
        while let Ok(parsed) = out_rx.try_recv() {
            match parsed {
                Parsed::Batch { rows: r, rejected: e, .. } => {
                    rows.extend(r);
                    rejected.extend(e);
                }
                Parsed::Fatal(error) => fatal = Some(error),
            }
        }
        (rows, rejected, fatal)
    }

    fn cell() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            "[a-z0-9.+]{1,12}@[a-z]{1,8}\\.(com|org|example)".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..12),
            Just(b"\"quoted, \"\"with\"\" comma\nand newline\"".to_vec()),
            Just(b"x\r\nBcc: evil@example.com".to_vec()),
            Just(b"\0".to_vec()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever the bytes and however they are chunked, the parser never
        /// panics, accepts only valid addresses and clean names, and accounts
        /// for no more rows than the file has records.
        #[test]
        fn any_input_is_parsed_or_rejected_without_panics(
            rows in proptest::collection::vec(proptest::collection::vec(cell(), 1..4), 0..30),
            chunk in 1usize..64,
        ) {
            let mut data = b"email,name,n:number\n".to_vec();
            for row in &rows {
                data.extend(row.join(&b","[..]));
                data.push(b'\n');
            }
            let (accepted, rejected, fatal) = run(&data, chunk);
            prop_assert!(accepted.len() + rejected.len() <= rows.len() + data.iter().filter(|&&b| b == b'\n').count());
            for row in &accepted {
                prop_assert!(broadside_mail::address::normalize_address("e", &row.subscriber.email).is_ok());
                prop_assert!(!row.subscriber.display_name.contains(['\r', '\n', '\0']));
            }
            if let Some(error) = fatal {
                prop_assert_eq!(error.code(), tonic::Code::InvalidArgument);
            }
            let mut lines: Vec<u64> = accepted.iter().map(|r| r.line).chain(rejected.iter().map(|r| r.0)).collect();
            let before = lines.len();
            lines.sort_unstable();
            lines.dedup();
            prop_assert_eq!(lines.len(), before, "a line is reported at most once");
        }
    }

    #[test]
    fn a_broken_stream_does_not_import_its_cut_off_last_line() {
        let data = b"email,name\nada@example.com,Ada\nbob@example.co";
        let (rows, rejected, fatal) = run_stream(data, 7, true);
        assert_eq!(rows.iter().map(|r| r.subscriber.email.as_str()).collect::<Vec<_>>(), ["ada@example.com"]);
        assert!(rejected.is_empty(), "{rejected:?}");
        assert!(fatal.is_some_and(|e| e.to_string().contains("reset")));
        // The same bytes ending cleanly: the last line is whole and is imported.
        assert_eq!(run_stream(data, 7, false).0.len(), 2);
    }

    #[test]
    fn line_numbers_are_right_in_crlf_files_and_across_quoted_newlines() {
        let data = b"email,name\r\nbad1,A\r\n\"bad2\",\"two\r\nlines\"\r\nbad3,C\r\n";
        let (_, rejected, fatal) = run(data, 3);
        assert!(fatal.is_none());
        let lines: Vec<u64> = rejected.iter().map(|r| r.0).collect();
        assert_eq!(lines, vec![2, 3, 5]);
    }

    #[test]
    fn chunk_boundaries_do_not_change_the_result() {
        let data = b"email,name\nada@example.com,\"Ada, \"\"the\"\" first\"\nbad,Bob\ncy@example.org,Cy\n";
        let whole = run(data, data.len());
        for chunk in 1..8 {
            let split = run(data, chunk);
            assert_eq!(split.0.len(), whole.0.len());
            assert_eq!(split.1, whole.1);
        }
        assert_eq!(whole.0[0].subscriber.display_name, "Ada, \"the\" first");
        assert_eq!(whole.1, vec![(3, "email: \"bad\" has no '@'".to_string())]);
    }
}
