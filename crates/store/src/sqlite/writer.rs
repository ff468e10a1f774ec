//! Group commit for the embedded store. Every call is a closure run on one
//! writer thread; the closures waiting when the thread comes round run in
//! one `BEGIN IMMEDIATE` transaction, each inside its own savepoint. One
//! commit then serves dozens of callers (a sender at full speed makes three
//! store calls per message), and a failing call rolls back only its own
//! changes. Callers get their answer only after the commit, so nothing is
//! reported done before it is durable.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, Transaction};
use tokio::sync::oneshot;

use crate::{Result, StoreError};

/// Calls per transaction at most, so one commit never waits on too many.
const MAX_GROUP: usize = 256;

/// Delivers a call's result once the group's commit outcome is known.
type Finish = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;
/// One call: runs in the shared transaction (`None` when it could not
/// start) and returns how to answer.
type Job = Box<dyn FnOnce(Option<&Transaction<'_>>) -> Finish + Send>;

#[derive(Clone)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread; it ends when the last store handle is dropped.
    pub(super) fn start(conn: Arc<Mutex<Connection>>) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(&conn, &queue))
            .expect("spawning the store writer thread");
        Self { jobs }
    }

    pub(super) async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel::<Result<T>>();
        let job: Job = Box::new(move |tx| {
            let result = match tx {
                Some(tx) => in_savepoint(tx, f),
                None => Err(StoreError::Backend("the transaction could not start".into())),
            };
            Box::new(move |committed| {
                let _ = answer.send(match committed {
                    Ok(()) => result,
                    Err(error) => Err(StoreError::Backend(format!("commit failed: {error}"))),
                });
            })
        });
        self.jobs.send(job).map_err(|_| StoreError::Backend("the store writer has stopped".into()))?;
        answered.await.map_err(|_| StoreError::Backend("the store writer dropped a call".into()))?
    }
}

/// Runs `f` between `SAVEPOINT` and `RELEASE`, rolling back to the
/// savepoint if it fails or panics.
fn in_savepoint<T>(tx: &Transaction<'_>, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
    tx.execute_batch("SAVEPOINT call")?;
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(tx)))
        .unwrap_or_else(|_| Err(StoreError::Backend("a store call panicked; its changes were rolled back".into())));
    match &result {
        Ok(_) => tx.execute_batch("RELEASE call")?,
        Err(_) => tx.execute_batch("ROLLBACK TO call; RELEASE call")?,
    }
    result
}

fn run(conn: &Mutex<Connection>, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(error) => {
                tracing::warn!(%error, calls = group.len(), "store transaction could not start");
                let message = error.to_string();
                for job in group {
                    job(None)(Err(message.clone()));
                }
                continue;
            }
        };
        let finishers: Vec<Finish> = group.into_iter().map(|job| job(Some(&tx))).collect();
        let committed = tx.commit().map_err(|e| e.to_string());
        for finish in finishers {
            finish(committed.clone());
        }
    }
}
