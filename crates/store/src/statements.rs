//! Counts of the statements a backend sends, by kind, so an operator can see
//! what each message costs the database (`broadside_store_statements_total`).
//! The store counts; whoever exports metrics reads the totals.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What one statement costs the database, coarsely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    /// A lightweight transaction (Paxos: about four round trips), single or in a conditional batch.
    Lwt,
    /// A plain write.
    Write,
    /// A read (a keyed read, or one page-by-page scan).
    Read,
    /// An unconditional batch (one partition).
    Batch,
}

impl StatementKind {
    pub const ALL: [StatementKind; 4] = [Self::Lwt, Self::Write, Self::Read, Self::Batch];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Lwt => "lwt",
            Self::Write => "write",
            Self::Read => "read",
            Self::Batch => "batch",
        }
    }
}

/// Running totals by kind. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct StatementCounts {
    totals: Arc<[AtomicU64; 4]>,
}

impl StatementCounts {
    pub fn count(&self, kind: StatementKind) {
        self.totals[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The total of one kind since the store was opened.
    pub fn total(&self, kind: StatementKind) -> u64 {
        self.totals[kind as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_their_totals() {
        let counts = StatementCounts::default();
        let clone = counts.clone();
        clone.count(StatementKind::Lwt);
        clone.count(StatementKind::Lwt);
        counts.count(StatementKind::Read);
        assert_eq!(StatementKind::ALL.map(|kind| counts.total(kind)), [2, 0, 1, 0]);
    }
}
