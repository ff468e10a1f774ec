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
/// start), inside a savepoint when it shares it with others, and returns
/// how to answer and whether it succeeded.
type Job = Box<dyn FnOnce(Option<&Transaction<'_>>, bool) -> (Finish, bool) + Send>;

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
        let job: Job = Box::new(move |tx, shared| {
            let result = match tx {
                Some(tx) if shared => in_savepoint(tx, f),
                // Alone in its transaction, a call needs no savepoint (which
                // journals every page it touches): a failure rolls back all.
                Some(tx) => guarded(tx, f),
                None => Err(StoreError::Backend("the transaction could not start".into())),
            };
            let ok = result.is_ok();
            let finish: Finish = Box::new(move |committed| {
                let _ = answer.send(match committed {
                    Ok(()) => result,
                    Err(error) => Err(StoreError::failed("commit", error)),
                });
            });
            (finish, ok)
        });
        self.jobs.send(job).map_err(|_| StoreError::Backend("the store writer has stopped".into()))?;
        answered.await.map_err(|_| StoreError::Backend("the store writer dropped a call".into()))?
    }
}

/// Runs `f`, turning a panic into an error (its changes are rolled back).
fn guarded<T>(tx: &Transaction<'_>, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(|| f(tx)))
        .unwrap_or_else(|_| Err(StoreError::Backend("a store call panicked; its changes were rolled back".into())))
}

/// Runs `f` between `SAVEPOINT` and `RELEASE`, rolling back to the
/// savepoint if it fails or panics.
fn in_savepoint<T>(tx: &Transaction<'_>, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
    tx.execute_batch("SAVEPOINT call")?;
    let result = guarded(tx, f);
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
                    job(None, false).0(Err(message.clone()));
                }
                continue;
            }
        };
        let shared = group.len() > 1;
        let (finishers, oks): (Vec<Finish>, Vec<bool>) = group.into_iter().map(|job| job(Some(&tx), shared)).unzip();
        let committed = if shared || oks.iter().all(|ok| *ok) {
            tx.commit().map_err(|e| e.to_string())
        } else {
            // The lone call failed: nothing of it may land. Its answer is its
            // own error either way.
            tx.rollback().map_err(|e| e.to_string())
        };
        for finish in finishers {
            finish(committed.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> (Writer, Arc<Mutex<Connection>>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::open_connection(&dir.path().join("w.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER PRIMARY KEY)").unwrap();
        let conn = Arc::new(Mutex::new(conn));
        (Writer::start(conn.clone()), conn, dir)
    }

    fn insert_then(v: i64, fail: bool) -> impl FnOnce(&Transaction<'_>) -> Result<()> + Send + 'static {
        move |tx| {
            tx.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
            if fail { Err(StoreError::Backend(format!("call {v} fails after writing"))) } else { Ok(()) }
        }
    }

    fn stored(conn: &Mutex<Connection>) -> Vec<i64> {
        let conn = conn.lock().unwrap();
        let mut statement = conn.prepare("SELECT v FROM t ORDER BY v").unwrap();
        statement.query_map([], |row| row.get(0)).unwrap().collect::<rusqlite::Result<_>>().unwrap()
    }

    /// A call alone in its transaction runs without a savepoint; when it
    /// fails, nothing it wrote lands.
    #[tokio::test]
    async fn a_lone_failing_call_leaves_nothing() {
        let (writer, conn, _dir) = writer();
        assert!(writer.run(insert_then(1, true)).await.is_err());
        writer.run(insert_then(2, false)).await.unwrap();
        assert_eq!(stored(&conn), vec![2]);
    }

    /// Calls that share a transaction: the failing one rolls back alone.
    #[tokio::test]
    async fn a_failing_call_in_a_group_rolls_back_alone() {
        let (writer, conn, _dir) = writer();
        // Holding the connection makes the next calls queue up and run as one group.
        let holder = {
            let conn = conn.clone();
            std::thread::spawn(move || {
                let _held = conn.lock().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(300));
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let calls: Vec<_> = (10..16)
            .map(|v| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.run(insert_then(v, v % 2 == 1)).await.is_ok() })
            })
            .collect();
        holder.join().unwrap();
        let oks: Vec<bool> = futures::future::join_all(calls).await.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(oks, vec![true, false, true, false, true, false]);
        assert_eq!(stored(&conn), vec![10, 12, 14]);
    }
}
