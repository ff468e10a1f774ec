//! `broadside events import FILE.jsonl`: streams behavioral events to
//! TrackEvents in batches. One JSON object per line:
//!
//! ```text
//! {"id": "order-1001", "email": "ada@example.com", "name": "purchase",
//!  "time": "2026-11-30T12:00:00Z", "properties": {"amount": 42.5, "sku": "BK-1"}}
//! ```
//!
//! `subscriber` (`subscribers/ID`) may replace `email`; `time` may be Unix
//! milliseconds. Lines that are not such objects are reported here with
//! their line number and not sent; the server's per-event errors are
//! mapped back to lines. Re-running the same file is safe (idempotent by id).

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context;
use broadside_proto::convert::{json_to_struct, millis_to_timestamp};
use broadside_proto::v1::behavior_service_client::BehaviorServiceClient;
use broadside_proto::v1::{TrackEventsRequest, TrackedEvent};
use clap::Subcommand;
use serde_json::Value;

use crate::connect::{ClientArgs, connect, plain};

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Stream behavioral events from a JSON Lines file (`-` for stdin).
    Import {
        file: PathBuf,
        /// Events per message.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Rejections to print.
        #[arg(long, default_value_t = 20)]
        show_errors: usize,
    },
}

/// One line as an event, or why it is not one.
pub fn parse_line(line: &str) -> Result<TrackedEvent, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(object) = value else { return Err("must be a JSON object".into()) };
    let text = |key: &str| -> Result<String, String> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("{key}: must be a string")),
        }
    };
    let id = if object.contains_key("event_id") { text("event_id")? } else { text("id")? };
    let time = match object.get("time") {
        Some(Value::Number(n)) => n.as_i64().ok_or("time: must be whole Unix milliseconds")?,
        Some(Value::String(s)) => s
            .parse::<jiff::Timestamp>()
            .map_err(|e| format!("time: {s:?} is not an RFC 3339 time ({e})"))?
            .as_millisecond(),
        _ => return Err("time: is required (RFC 3339 text or Unix milliseconds)".into()),
    };
    let properties = match object.get("properties") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(json_to_struct(map)),
        Some(_) => return Err("properties: must be an object".into()),
    };
    if let Some(unknown) = object
        .keys()
        .find(|k| !["id", "event_id", "subscriber", "email", "name", "time", "properties"].contains(&k.as_str()))
    {
        return Err(format!("{unknown}: unknown key (id, subscriber, email, name, time, properties)"));
    }
    Ok(TrackedEvent {
        event_id: id,
        subscriber: text("subscriber")?,
        email: text("email")?,
        name: text("name")?,
        time: millis_to_timestamp(time),
        properties,
    })
}

/// `(line, reason)` of lines refused before sending.
type LineErrors = Vec<(u64, String)>;

pub async fn run(args: &ClientArgs, command: EventsCommand) -> anyhow::Result<()> {
    let EventsCommand::Import { file, batch, show_errors } = command;
    let reader: Box<dyn BufRead + Send> = if file.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&file).with_context(|| format!("cannot open {}", file.display()))?,
        ))
    };
    let mut client = BehaviorServiceClient::new(connect(args).await?);
    let started = std::time::Instant::now();
    // Lines are read and parsed on a blocking thread; the index of each sent event maps back to its line.
    let (tx, rx) = tokio::sync::mpsc::channel::<TrackEventsRequest>(4);
    let reading = tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<u64>, LineErrors)> {
        let (mut lines_of, mut local) = (Vec::new(), Vec::new());
        let mut events = Vec::with_capacity(batch);
        for (number, line) in reader.lines().enumerate() {
            let number = number as u64 + 1;
            let line = line.with_context(|| format!("reading line {number}"))?;
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(&line) {
                Ok(event) => {
                    lines_of.push(number);
                    events.push(event);
                }
                Err(reason) => local.push((number, reason)),
            }
            if events.len() >= batch.max(1)
                && tx.blocking_send(TrackEventsRequest { events: std::mem::take(&mut events) }).is_err()
            {
                break; // the call failed; its error is reported below
            }
        }
        if !events.is_empty() {
            let _ = tx.blocking_send(TrackEventsRequest { events });
        }
        Ok((lines_of, local))
    });
    let response = client.track_events(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
    let (lines_of, local) = reading.await.context("reader thread")??;
    let response = response.map_err(plain)?.into_inner();
    let rejected = response.rejected as usize + local.len();
    crate::outln!(
        "accepted {}, duplicates {}, rejected {} ({} events in {:.1} s)",
        response.accepted,
        response.duplicates,
        rejected,
        lines_of.len() + local.len(),
        started.elapsed().as_secs_f64()
    );
    let mut errors: Vec<(u64, String)> = local;
    for error in &response.errors {
        let line = lines_of.get(error.index as usize).copied().unwrap_or_default();
        errors.push((line, format!("{}: {}", error.field, error.message)));
    }
    errors.sort();
    for (line, reason) in errors.iter().take(show_errors) {
        eprintln!("  line {line}: {reason}");
    }
    if rejected > show_errors.min(errors.len()) {
        eprintln!("  ... {} more rejected events", rejected - show_errors.min(errors.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_events_or_name_the_bad_key() {
        let event = parse_line(
            r#"{"id":"o1","email":"a@example.com","name":"purchase","time":"2026-11-30T12:00:00Z","properties":{"amount":4.5}}"#,
        )
        .unwrap();
        assert_eq!((event.event_id.as_str(), event.name.as_str()), ("o1", "purchase"));
        assert_eq!(event.time.unwrap().seconds, 1_796_040_000);
        let cases = [
            ("[1]", "must be a JSON object"),
            ("{", "not JSON"),
            (r#"{"id":"o","name":"x"}"#, "time: is required"),
            (r#"{"id":"o","time":"yesterday"}"#, "time: \"yesterday\""),
            (r#"{"id":"o","time":1,"properties":[1]}"#, "properties: must be an object"),
            (r#"{"id":"o","time":1,"colour":"red"}"#, "colour: unknown key"),
            (r#"{"id":7,"time":1}"#, "id: must be a string"),
        ];
        for (line, expected) in cases {
            let error = parse_line(line).unwrap_err();
            assert!(error.contains(expected), "{line}: {error}");
        }
    }
}
