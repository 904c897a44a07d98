//! `tributary sync`: refresh every registered person from every connector, with bounded
//! concurrency. Each snapshot is written atomically on its own, so a sync can be stopped at any
//! point and run again without harm.

use std::sync::atomic::{AtomicU64, Ordering};

use connectors::{Registry, Shape};
use futures::StreamExt;
use sea_orm::DatabaseConnection;

use crate::error::ApiResult;
use crate::services::bulk::{ExtractOutcome, sync_extract};
use crate::services::persons;
use crate::services::sources::{Stored, store_snapshot};

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
    let mut report = SyncReport::default();
    for connector in registry.all().filter(|c| c.shape() == Shape::Bulk) {
        let outcome = sync_extract(db, connector.as_ref()).await?;
        report
            .extracts
            .push((connector.settings().id.0.clone(), outcome));
    }

    let people = persons::all_identifiers(db).await?;
    let total = people.len() as u64;
    let fetched = AtomicU64::new(0);
    let unchanged = AtomicU64::new(0);
    let rejected = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let jobs = people.iter().map(|identifiers| {
        let (fetched, unchanged, rejected, failed, done) =
            (&fetched, &unchanged, &rejected, &failed, &done);
        async move {
            let per_person = registry
                .all()
                .filter(|c| c.shape() == Shape::Live)
                .filter_map(|c| c.subject(identifiers).map(|s| (c, s)))
                .map(|(connector, subject)| async move {
                    match connector.fetch(&subject).await {
                        Ok(records) => {
                            let id = connector.settings().id.0.clone();
                            match store_snapshot(db, &id, &records).await {
                                Ok((_, Stored::Changed)) => {
                                    fetched.fetch_add(1, Ordering::Relaxed);
                                    rejected.fetch_add(
                                        records.rejected.len() as u64,
                                        Ordering::Relaxed,
                                    );
                                }
                                Ok((_, Stored::Unchanged)) => {
                                    unchanged.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "storing a snapshot failed");
                                    failed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "fetch failed during sync");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            futures::future::join_all(per_person).await;
            let now = done.fetch_add(1, Ordering::Relaxed) + 1;
            progress.tick(now, total);
        }
    });
    futures::stream::iter(jobs)
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<()>>()
        .await;
    report.people = total;
    report.fetched = fetched.into_inner();
    report.unchanged = unchanged.into_inner();
    report.rejected = rejected.into_inner();
    report.failed = failed.into_inner();
    Ok(report)
}
