//! `broadside subscribers import FILE.csv --list L`: streams the file to
//! `ImportSubscribers` in chunks with a progress bar (bytes, rows/s, ETA).
//!
//! Without `--request-id` the id is derived from the list, the mode and the
//! file's contents, so re-running the same command after a crash resumes
//! where the server stopped, and re-running it after success changes nothing.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use broadside_proto::v1::subscriber_service_client::SubscriberServiceClient;
use broadside_proto::v1::{ImportMode, ImportSubscribersRequest};
use sha2::Digest;

use crate::connect::{ClientArgs, connect, plain};

const CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Mode {
    /// Create new subscribers, update existing ones (name, merged attributes).
    Upsert,
    /// Create new subscribers, leave existing ones as they are.
    SkipExisting,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// A UTF-8 CSV file whose header names the columns: `email` (required),
    /// `name`, and attributes, optionally typed: `age:number`, `vip:bool`,
    /// `signup:timestamp`, `tags:list` (`|`-separated).
    pub file: PathBuf,
    /// `lists/ID` to import into.
    #[arg(long)]
    pub list: String,
    #[arg(long, value_enum, default_value = "upsert")]
    pub mode: Mode,
    /// Validate and count only; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Idempotency key (default: derived from list, mode and file contents).
    #[arg(long)]
    pub request_id: Option<String>,
    /// Rejections to print (all are counted).
    #[arg(long, default_value_t = 20)]
    pub show_errors: usize,
}

/// The default request id: the same file, list and mode give the same id.
fn derive_request_id(args: &ImportArgs) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(&args.file).with_context(|| format!("cannot open {}", args.file.display()))?;
    let mut hasher = sha2::Sha256::new();
    hasher.update(format!("{}\n{:?}\n", args.list, args.mode));
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(format!("import-{}", &hex::encode(hasher.finalize())[..24]))
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr_with_hz(4));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg} ETA {eta}",
        )
        .expect("valid template"),
    );
    bar
}

pub async fn run(client_args: &ClientArgs, args: ImportArgs) -> anyhow::Result<()> {
    let total = std::fs::metadata(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?.len();
    let request_id = match (&args.request_id, args.dry_run) {
        (Some(id), _) => id.clone(),
        (None, true) => String::new(),
        (None, false) => derive_request_id(&args)?,
    };
    let mut client = SubscriberServiceClient::new(connect(client_args).await?)
        .max_encoding_message_size(4 * 1024 * 1024)
        .max_decoding_message_size(64 * 1024 * 1024);
    let bar = progress_bar(total);
    let started = Instant::now();
    let lines = Arc::new(AtomicU64::new(0));

    // A blocking reader feeds the request stream; the channel's bound is the backpressure.
    let (tx, rx) = tokio::sync::mpsc::channel::<ImportSubscribersRequest>(4);
    let mut file = std::fs::File::open(&args.file).with_context(|| format!("cannot open {}", args.file.display()))?;
    let mode = match args.mode {
        Mode::Upsert => ImportMode::Upsert,
        Mode::SkipExisting => ImportMode::SkipExisting,
    } as i32;
    let mut first = Some(ImportSubscribersRequest {
        parent: args.list.clone(),
        format: "csv".into(),
        mode,
        dry_run: args.dry_run,
        request_id: request_id.clone(),
        chunk: Vec::new(),
    });
    let (reader_bar, reader_lines) = (bar.clone(), lines.clone());
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        loop {
            let mut chunk = vec![0u8; CHUNK];
            let n = file.read(&mut chunk)?;
            chunk.truncate(n);
            let newlines = chunk.iter().filter(|&&b| b == b'\n').count() as u64;
            let seen = reader_lines.fetch_add(newlines, Ordering::Relaxed) + newlines;
            reader_bar.inc(n as u64);
            let elapsed = reader_bar.elapsed().as_secs_f64().max(0.001);
            reader_bar.set_message(format!("{seen} rows, {:.0} rows/s", seen as f64 / elapsed));
            let message = match first.take() {
                Some(first) => ImportSubscribersRequest { chunk, ..first },
                None if n == 0 => return Ok(()),
                None => ImportSubscribersRequest { chunk, ..Default::default() },
            };
            if tx.blocking_send(message).is_err() || n == 0 {
                return Ok(()); // the server answered early (an error) or the file ended
            }
        }
    });
    let answer = client.import_subscribers(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
    bar.finish_and_clear();
    reader.await.context("file reader")?.with_context(|| format!("reading {}", args.file.display()))?;
    let response = answer.map_err(plain)?.into_inner();
    let seconds = started.elapsed().max(Duration::from_millis(1)).as_secs_f64();
    let applied = response.imported + response.updated + response.skipped;
    if response.lines == 0 && response.resumed_lines > 0 {
        crate::outln!(
            "already imported under request id {request_id} ({} lines); nothing to do (pass --request-id to import again)",
            response.resumed_lines
        );
    }
    crate::outln!(
        "{}imported {}, updated {}, skipped {}, rejected {} of {} lines in {seconds:.1} s ({:.0} rows/s){}",
        if response.dry_run { "dry run: would have " } else { "" },
        response.imported,
        response.updated,
        response.skipped,
        response.rejected,
        response.lines,
        applied as f64 / seconds,
        if response.resumed_lines > 0 && response.lines > 0 {
            format!("; {} lines were already committed by an earlier run", response.resumed_lines)
        } else {
            String::new()
        }
    );
    for error in response.errors.iter().take(args.show_errors) {
        eprintln!("  {error}");
    }
    if response.rejected as usize > args.show_errors.min(response.errors.len()) {
        eprintln!(
            "  ... {} more rejected rows",
            response.rejected as usize - args.show_errors.min(response.errors.len())
        );
    }
    Ok(())
}
