//! `ImportSubscribers`: a client stream of CSV chunks into one list.
//!
//! A blocking thread parses while the store writes the previous batch (one
//! transaction per batch of rows, with the job's progress), so the two cores
//! work in parallel and memory stays bounded. Under a request id a re-run
//! resumes after the last committed line; nothing is imported twice.

mod parse;

use broadside_auth::Caller;
use broadside_proto::v1::*;
use broadside_proto::{ServiceError, names};
use broadside_store::{ConsentContext, ImportJob, UpsertMode, UpsertOptions};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use parse::{ChunkReader, Parsed};
pub use parse::{MAX_LINE_BYTES, MAX_ROW_BYTES};

use broadside_proto::v1::subscriber_event::Change;
use broadside_store::ImportedRow;

use crate::Imports;
use crate::events::{Position, status_name, subscription_changed, upserted};
use crate::tenant;

/// Rejections listed in the response (all are counted).
const MAX_ERRORS: usize = 1000;

impl Imports<'_> {
    /// Imports the CSV carried by `stream`, whose first message holds the options.
    pub async fn import_subscribers<S>(
        &self,
        caller: &Caller,
        stream: S,
    ) -> Result<(ImportSubscribersResponse, Position), ServiceError>
    where
        S: Stream<Item = Result<ImportSubscribersRequest, tonic::Status>> + Send + Unpin + 'static,
    {
        let mut stream = stream;
        let first = match stream.next().await {
            Some(Ok(first)) => first,
            Some(Err(status)) => return Err(ServiceError::invalid("stream", status.message().to_owned())),
            None => return Err(ServiceError::invalid("stream", "is empty; the first message names the list")),
        };
        let list_id = names::parse("parent", &first.parent, "lists")?.to_owned();
        if !matches!(first.format.as_str(), "" | "csv") {
            return Err(ServiceError::invalid("format", format!("{:?} is not supported; use csv", first.format)));
        }
        if self.store.get_list(tenant(caller), &list_id).await?.is_none() {
            return Err(ServiceError::NotFound(first.parent));
        }
        let mode = match ImportMode::try_from(first.mode) {
            Ok(ImportMode::SkipExisting) => UpsertMode::SkipExisting,
            Ok(ImportMode::Upsert | ImportMode::Unspecified) => UpsertMode::Upsert,
            Err(_) => return Err(ServiceError::invalid("mode", format!("unknown value {}", first.mode))),
        };
        let dry_run = first.dry_run;
        let mut job =
            ImportJob { request_id: first.request_id.clone(), list_id: list_id.clone(), ..Default::default() };
        if !job.request_id.is_empty()
            && !dry_run
            && let Some(earlier) = self.store.import_job(tenant(caller), &job.request_id).await?
        {
            if earlier.list_id != list_id {
                return Err(ServiceError::FailedPrecondition(format!(
                    "request_id {:?} was used for an import into lists/{}; use a new request_id",
                    job.request_id, earlier.list_id
                )));
            }
            if earlier.done {
                tracing::info!(tenant = %caller.tenant, request_id = %job.request_id, "import already done: answering from its record");
                return Ok((response(&earlier, 0, false, earlier.lines_done as i64), Position::default()));
            }
            job = earlier;
        }
        let resume_after = job.lines_done;

        // Chunks → parser thread → batches → this task, each through a small channel.
        let (chunk_tx, chunk_rx) = mpsc::channel::<Result<Vec<u8>, String>>(8);
        let (batch_tx, mut batch_rx) = mpsc::channel::<Parsed>(2);
        let feeder = tokio::spawn(async move {
            if !first.chunk.is_empty() && chunk_tx.send(Ok(first.chunk)).await.is_err() {
                return Ok(());
            }
            while let Some(message) = stream.next().await {
                let message = match message {
                    Ok(message) => message,
                    Err(status) => {
                        let reason = format!("the client stream broke: {}", status.message());
                        let _ = chunk_tx.send(Err(reason.clone())).await;
                        return Err(ServiceError::Unavailable(reason));
                    }
                };
                if chunk_tx.send(Ok(message.chunk)).await.is_err() {
                    break; // the parser stopped
                }
            }
            Ok::<(), ServiceError>(())
        });
        let (parse_tenant, parse_list) = (caller.tenant.clone(), list_id.clone());
        let parser = tokio::task::spawn_blocking(move || {
            let result =
                parse::parse(ChunkReader::new(chunk_rx), &parse_tenant, &parse_list, resume_after, batch_tx.clone());
            if let Err(error) = result {
                let _ = batch_tx.blocking_send(Parsed::Fatal(error));
            }
        });

        let (publisher, mut to_publish) = mpsc::channel::<Vec<ImportedRow>>(1);
        let publishing = {
            let (api, tenant, list_id) = (self.0.clone(), caller.tenant.clone(), list_id.clone());
            tokio::spawn(async move {
                let mut position = Position::default();
                while let Some(done) = to_publish.recv().await {
                    position = position.merge(api.publish(import_events(&tenant, &list_id, done)).await?);
                }
                Ok::<Position, ServiceError>(position)
            })
        };
        let options = UpsertOptions {
            mode,
            resubscribe: false,
            consent: ConsentContext { source: "import".into(), ..Default::default() },
        };
        let (mut lines, mut resumed, mut fatal) = (0u64, 0u64, None);
        while let Some(parsed) = batch_rx.recv().await {
            let (rows, rejected, last_line, resumed_here) = match parsed {
                Parsed::Batch { rows, rejected, last_line, resumed } => (rows, rejected, last_line, resumed),
                Parsed::Fatal(error) => {
                    fatal = Some(error);
                    break;
                }
            };
            lines = last_line.saturating_sub(1);
            resumed += resumed_here;
            job.rejected += rejected.len() as i64;
            for (line, reason) in rejected {
                if job.errors.len() < MAX_ERRORS {
                    job.errors.push(format!("line {line}: {reason}"));
                }
            }
            job.lines_done = job.lines_done.max(last_line);
            if dry_run {
                let emails = rows.iter().map(|r| r.subscriber.email.clone()).collect();
                let existing = self.store.existing_emails(tenant(caller), emails).await?.len() as i64;
                job.imported += rows.len() as i64 - existing;
                match mode {
                    UpsertMode::Upsert => job.updated += existing,
                    UpsertMode::SkipExisting => job.skipped += existing,
                }
                continue;
            }
            let (done, updated_job) = self.store.import_batch(tenant(caller), job, rows, options.clone()).await?;
            job = updated_job;
            // Events are built and published by a second task while this one
            // writes the next batch; a publish failure stops the import.
            if publisher.send(done).await.is_err() {
                break;
            }
        }
        drop(publisher);
        let published = publishing.await.map_err(|e| ServiceError::Internal(format!("import publisher: {e}")))?;
        drop(batch_rx);
        let _ = parser.await;
        let fed = feeder.await.map_err(|e| ServiceError::Internal(format!("import feeder: {e}")))?;
        let position = published?;
        if let Some(error) = fatal {
            tracing::warn!(tenant = %caller.tenant, list = %list_id, %error, imported = job.imported, "import stopped");
            return Err(error);
        }
        fed?;
        if !dry_run {
            // The last call marks the job done and makes the whole import
            // durable (the embedded store fsyncs its log) before we answer.
            job.done = true;
            job = self.store.import_batch(tenant(caller), job, Vec::new(), options).await?.1;
        }
        tracing::info!(
            tenant = %caller.tenant, list = %list_id, lines, imported = job.imported, updated = job.updated,
            skipped = job.skipped, rejected = job.rejected, dry_run, "import finished"
        );
        if !dry_run {
            let detail = serde_json::json!({
                "request_id": job.request_id, "lines": lines, "imported": job.imported, "updated": job.updated,
                "skipped": job.skipped, "rejected": job.rejected,
            });
            broadside_auth::audit(&self.store, caller, "subscribers.import", &format!("lists/{list_id}"), detail)
                .await?;
        }
        Ok((response(&job, lines as i64, dry_run, resumed as i64), position))
    }
}

/// State-carrying events for imported rows: the full state of changed
/// subscribers, the membership of those left as they were.
fn import_events(tenant: &str, list_id: &str, done: Vec<ImportedRow>) -> Vec<(String, String, Change)> {
    done.into_iter()
        .map(|row| {
            let change = if row.changed {
                let mut change = upserted(&broadside_store::Subscriber {
                    tenant: tenant.to_owned(),
                    id: row.subscriber_id.clone(),
                    email: row.email,
                    display_name: row.display_name,
                    attributes: row.attributes,
                    status: row.subscriber_status,
                    lists: Vec::new(),
                    subscriptions: Vec::new(),
                    create_time: 0,
                    update_time: 0,
                });
                if let Change::Upserted(upserted) = &mut change {
                    upserted.subscriptions.insert(list_id.to_owned(), status_name(row.status).into());
                }
                change
            } else {
                subscription_changed(list_id, row.status, "import")
            };
            (tenant.to_owned(), row.subscriber_id, change)
        })
        .collect()
}

fn response(job: &ImportJob, lines: i64, dry_run: bool, resumed_lines: i64) -> ImportSubscribersResponse {
    ImportSubscribersResponse {
        imported: job.imported,
        updated: job.updated,
        rejected: job.rejected,
        errors: job.errors.clone(),
        skipped: job.skipped,
        lines,
        dry_run,
        resumed_lines,
    }
}
