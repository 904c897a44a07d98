//! `tributary sync`: refresh every registered person from every connector, with bounded
//! concurrency. Each snapshot is written atomically on its own, so a sync can be stopped at any
//! point and run again without harm.

use std::sync::atomic::{AtomicU64, Ordering};

use connectors::{PersonRecords, Registry, Shape};
use futures::StreamExt;
use sea_orm::DatabaseConnection;

use crate::error::ApiResult;
use crate::services::bulk::{ExtractOutcome, sync_extract};
use crate::services::persons;
use crate::services::sources::{Stored, store_snapshots};

/// Snapshots stored per transaction during a sync.
const STORE_BATCH: usize = 256;

/// Snapshots written by a sync before the first refresh of PostgreSQL's statistics; each
/// later refresh comes after four times as many (see the storing loop in [`run`]).
const FIRST_ANALYZE: u64 = 1024;

/// People read from the registry at a time.
const PAGE: u64 = 1000;

/// People a sync refreshes at once unless told otherwise (`tributary sync --concurrency`).
/// A partner is asked for each of them at once, so this is also about how many requests a
/// sync has in flight to each partner: as many as a partner's own default limit
/// (`max_concurrency`, 64), which still applies. A sync refreshes at most this many people
/// a partner's round trip: at 16, a partner 50 ms away held it to 320 people a second.
pub const DEFAULT_CONCURRENCY: usize = 64;

/// What a sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// People visited.
    pub people: u64,
    /// Fetches whose records changed (or were new).
    pub fetched: u64,
    /// Fetches whose records were the same as stored.
    pub unchanged: u64,
    /// Records rejected by validation in the fetches that changed.
    pub rejected: u64,
    /// Fetches that failed.
    pub failed: u64,
    /// Each bulk source's outcome.
    pub extracts: Vec<(String, ExtractOutcome)>,
}

/// Progress as people are done: `(done, total)`.
pub trait Progress: Sync {
    /// Called after each person.
    fn tick(&self, done: u64, total: u64);
}

impl<F: Fn(u64, u64) + Sync> Progress for F {
    fn tick(&self, done: u64, total: u64) {
        self(done, total);
    }
}

/// Refreshes bulk extracts, then every person from every live connector.
pub async fn run(
    db: &DatabaseConnection,
    registry: &Registry,
    concurrency: usize,
    progress: &dyn Progress,
) -> ApiResult<SyncReport> {
    run_analyzing_from(db, registry, concurrency, progress, FIRST_ANALYZE).await
}

/// As [`run`], refreshing PostgreSQL's statistics first after `first_analyze` snapshots
/// (then after four times as many each time).
pub async fn run_analyzing_from(
    db: &DatabaseConnection,
    registry: &Registry,
    concurrency: usize,
    progress: &dyn Progress,
    first_analyze: u64,
) -> ApiResult<SyncReport> {
    let mut report = SyncReport::default();
    for connector in registry.all().filter(|c| c.shape() == Shape::Bulk) {
        let outcome = sync_extract(db, connector.as_ref()).await?;
        report
            .extracts
            .push((connector.settings().id.0.clone(), outcome));
    }

    let total = persons::count(db).await?;
    let failed = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let page_error: std::sync::Mutex<Option<crate::error::ApiError>> = Default::default();
    // Fetches run `concurrency` people at a time; what they bring is stored by one writer in
    // batches of up to STORE_BATCH snapshots a transaction, while the next fetches go on.
    let (sender, mut receiver) =
        tokio::sync::mpsc::channel::<(String, PersonRecords)>(4 * STORE_BATCH);
    // People are read from the registry a page at a time, as the fetches need them.
    let people = futures::stream::unfold(Some(None::<String>), move |cursor| async move {
        let after = cursor?;
        match persons::identifiers_page(db, after.as_deref(), PAGE).await {
            Ok(page) if page.is_empty() => None,
            Ok(page) => {
                let next = page.last().map(|(id, _)| id.clone());
                Some((Ok(page), Some(next)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
    .flat_map(|page| match page {
        Ok(page) => futures::stream::iter(page.into_iter().map(Ok)).left_stream(),
        Err(e) => futures::stream::once(std::future::ready(Err(e))).right_stream(),
    });
    let (failed_ref, done_ref, page_error_ref) = (&failed, &done, &page_error);
    // The jobs own the sender: once every job has run and the jobs are dropped, the writer
    // sees the channel close and finishes.
    let jobs = people.map(move |person| {
        let (failed, done, sender) = (failed_ref, done_ref, sender.clone());
        async move {
            let identifiers = match person {
                Ok((_, identifiers)) => identifiers,
                Err(e) => {
                    *page_error_ref
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
                    return;
                }
            };
            let identifiers = &identifiers;
            let per_person = registry
                .all()
                .filter(|c| c.shape() == Shape::Live)
                .filter_map(|c| c.subject(identifiers).map(|s| (c, s)))
                .map(|(connector, subject)| async move {
                    match connector.fetch(&subject).await {
                        Ok(records) => Some((connector.settings().id.0.clone(), records)),
                        Err(e) => {
                            tracing::debug!(error = %e, "fetch failed during sync");
                            failed.fetch_add(1, Ordering::Relaxed);
                            None
                        }
                    }
                });
            for fetched in futures::future::join_all(per_person)
                .await
                .into_iter()
                .flatten()
            {
                if sender.send(fetched).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            let now = done.fetch_add(1, Ordering::Relaxed) + 1;
            progress.tick(now, total);
        }
    });
    let fetching = async {
        jobs.buffer_unordered(concurrency.max(1))
            .collect::<Vec<()>>()
            .await;
    };
    let storing = async {
        let mut batch = Vec::with_capacity(STORE_BATCH);
        let (mut fetched, mut unchanged, mut rejected, mut lost) = (0u64, 0u64, 0u64, 0u64);
        let mut next_analyze = first_analyze;
        while receiver.recv_many(&mut batch, STORE_BATCH).await > 0 {
            let refs: Vec<(&str, &PersonRecords)> =
                batch.iter().map(|(c, r)| (c.as_str(), r)).collect();
            match store_snapshots(db, &refs).await {
                Ok(outcomes) => {
                    for ((_, records), (_, stored)) in batch.iter().zip(outcomes) {
                        match stored {
                            Stored::Changed => {
                                fetched += 1;
                                rejected += records.rejected.len() as u64;
                            }
                            Stored::Unchanged => unchanged += 1,
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, snapshots = batch.len(), "storing a batch of snapshots failed");
                    lost += batch.len() as u64;
                }
            }
            batch.clear();
            // Each batch first reads the stored versions of its 256 subjects. Without column
            // statistics PostgreSQL takes 256 keys to match every row, and scans all of a
            // connector's snapshots: a first sync into an empty store slowed as the table
            // grew. Statistics refreshed as the table grows (after 1,024 snapshots, 4,096, 16,384...) keep it on the index.
            if fetched + unchanged >= next_analyze {
                crate::db::refresh_statistics(db, &["upstream_snapshots"]).await;
                next_analyze = next_analyze.saturating_mul(4);
            }
        }
        (fetched, unchanged, rejected, lost)
    };
    let ((), (fetched, unchanged, rejected, lost)) = tokio::join!(fetching, storing);
    crate::db::refresh_statistics(db, &["upstream_snapshots", "rejected_records"]).await;
    if let Some(e) = page_error
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        return Err(e);
    }
    report.people = total;
    report.fetched = fetched;
    report.unchanged = unchanged;
    report.rejected = rejected;
    report.failed = failed.into_inner() + lost;
    Ok(report)
}
