//! Per-request batching of store reads (async-graphql's DataLoader): the budgets of a page of
//! people are read in a fixed number of queries, however long the page.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::dataloader::{DataLoader, Loader};
use connectors::PersonRecords;
use entities::{bulk_extract, bulk_record, rejected_record, upstream_snapshot};
use sea_orm::{ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter};

use crate::budget::assemble::SourceMeta;
use crate::error::{ApiError, ApiResult};
use crate::pg_bundle::{self, Bundle};
use crate::reader::Reader;
use crate::services::plan::{self, Item};
use crate::services::sources::{self, Kept, StoreReader, usable_snapshot};

type Shared<E> = Arc<E>;

fn shared(e: impl Into<ApiError>) -> Shared<ApiError> {
    Arc::new(e.into())
}

/// Groups `(a, b)` keys by `a`.
fn by_first(keys: &[(String, String)]) -> HashMap<&str, Vec<&str>> {
    let mut groups: HashMap<&str, Vec<&str>> = HashMap::new();
    for (a, b) in keys {
        groups.entry(a.as_str()).or_default().push(b.as_str());
    }
    groups
}

/// Snapshots by (connector, subject key).
pub struct Snapshots(Reader);

impl Loader<(String, String)> for Snapshots {
    type Value = (PersonRecords, SourceMeta);
    type Error = Shared<ApiError>;

    async fn load(
        &self,
        keys: &[(String, String)],
    ) -> Result<HashMap<(String, String), Self::Value>, Self::Error> {
        // One query for every stream's snapshots: the pairs asked for are a subset of
        // connectors x subjects, and rows outside the pairs are dropped here. On a SQLite
        // file, each pair is looked up by itself (see `sqlite_reads::snapshots_of`).
        let groups = by_first(keys);
        let mut out = HashMap::new();
        let rows = match self.0.sqlite() {
            Some(local) => {
                let pairs: Vec<(&str, &str)> =
                    keys.iter().map(|(c, s)| (c.as_str(), s.as_str())).collect();
                local.snapshots(&pairs).map_err(shared)?
            }
            None => {
                let connectors: Vec<&str> = groups.keys().copied().collect();
                let mut subjects: Vec<&str> = groups.values().flatten().copied().collect();
                subjects.sort_unstable();
                subjects.dedup();
                upstream_snapshot::Entity::find()
                    .filter(upstream_snapshot::Column::Connector.is_in(connectors))
                    .filter(upstream_snapshot::Column::SubjectKey.is_in(subjects))
                    .all(&self.0)
                    .await
                    .map_err(shared)?
            }
        };
        for row in rows {
            let wanted = groups
                .get(row.connector.as_str())
                .is_some_and(|s| s.contains(&row.subject_key.as_str()));
            if wanted {
                let key = (row.connector.clone(), row.subject_key.clone());
                if let Some(snapshot) = usable_snapshot(row) {
                    out.insert(key, snapshot);
                }
            }
        }
        Ok(out)
    }
}

/// Current extracts by connector.
pub struct Extracts(Reader);

impl Loader<String> for Extracts {
    type Value = bulk_extract::Model;
    type Error = Shared<ApiError>;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        let rows = match self.0.sqlite() {
            Some(local) => {
                let connectors: Vec<&str> = keys.iter().map(String::as_str).collect();
                local.current_extracts(&connectors).map_err(shared)?
            }
            None => bulk_extract::Entity::find()
                .filter(bulk_extract::Column::Connector.is_in(keys.to_vec()))
                .filter(bulk_extract::Column::Current.eq(true))
                .all(&self.0)
                .await
                .map_err(shared)?,
        };
        Ok(rows.into_iter().map(|e| (e.connector.clone(), e)).collect())
    }
}

/// Extract rows by (extract id, subject key).
pub struct BulkRows(Reader);

impl Loader<(String, String)> for BulkRows {
    type Value = Vec<bulk_record::Model>;
    type Error = Shared<ApiError>;

    async fn load(
        &self,
        keys: &[(String, String)],
    ) -> Result<HashMap<(String, String), Self::Value>, Self::Error> {
        let mut out: HashMap<(String, String), Self::Value> = HashMap::new();
        for (extract, subjects) in by_first(keys) {
            let rows = match self.0.sqlite() {
                Some(local) => local.bulk_rows(extract, &subjects).map_err(shared)?,
                None => bulk_record::Entity::find()
                    .filter(bulk_record::Column::ExtractId.eq(extract))
                    .filter(bulk_record::Column::SubjectKey.is_in(subjects))
                    .all(&self.0)
                    .await
                    .map_err(shared)?,
            };
            for row in rows {
                out.entry((row.extract_id.clone(), row.subject_key.clone()))
                    .or_default()
                    .push(row);
            }
        }
        Ok(out)
    }
}

/// Rejected records by (connector, subject key).
pub struct RejectedRows(Reader);

impl Loader<(String, String)> for RejectedRows {
    type Value = Vec<rejected_record::Model>;
    type Error = Shared<ApiError>;

    async fn load(
        &self,
        keys: &[(String, String)],
    ) -> Result<HashMap<(String, String), Self::Value>, Self::Error> {
        let mut out: HashMap<(String, String), Self::Value> = HashMap::new();
        for (connector, subjects) in by_first(keys) {
            let rows = match self.0.sqlite() {
                Some(local) => local.rejected(connector, &subjects).map_err(shared)?,
                None => rejected_record::Entity::find()
                    .filter(rejected_record::Column::Connector.eq(connector))
                    .filter(rejected_record::Column::SubjectKey.is_in(subjects))
                    .all(&self.0)
                    .await
                    .map_err(shared)?,
            };
            for row in rows {
                if let Some(subject) = row.subject_key.clone() {
                    out.entry((row.connector.clone(), subject))
                        .or_default()
                        .push(row);
                }
            }
        }
        Ok(out)
    }
}

/// Plan items by person id.
pub struct PlanItems(Reader);

impl Loader<String> for PlanItems {
    type Value = Vec<Item>;
    type Error = Shared<ApiError>;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        match self.0.sqlite() {
            Some(local) => {
                let people: Vec<&str> = keys.iter().map(String::as_str).collect();
                let (items, shares) = local.plan_items(&people).map_err(shared)?;
                plan::group_by_person(items, shares).map_err(shared)
            }
            None => plan::for_people(&self.0, keys).await.map_err(shared),
        }
    }
}

/// A view's (person id, [(connector, subject key)]), read with every other view of the page in
/// one statement (PostgreSQL only; see `pg_bundle`).
type BundleKey = (String, Vec<(String, String)>);

/// Bundles of the page's views.
pub struct Bundles(Reader);

impl Loader<BundleKey> for Bundles {
    type Value = Arc<Bundle>;
    type Error = Shared<ApiError>;

    async fn load(
        &self,
        keys: &[BundleKey],
    ) -> Result<HashMap<BundleKey, Self::Value>, Self::Error> {
        let mut pairs: Vec<(String, String)> =
            keys.iter().flat_map(|(_, p)| p.iter().cloned()).collect();
        pairs.sort_unstable();
        pairs.dedup();
        let people: Vec<String> = keys.iter().map(|(p, _)| p.clone()).collect();
        let bundle = match &self.0 {
            Reader::Postgres(reads) => pg_bundle::read_shared(reads, pairs, people).await?,
            other => Arc::new(
                pg_bundle::read(other, &pairs, &people)
                    .await
                    .map_err(shared)?,
            ),
        };
        Ok(keys.iter().map(|k| (k.clone(), bundle.clone())).collect())
    }
}

/// One request's loaders.
/// Turns of the scheduler a batch waits before it loads.
const BATCH_TURNS: usize = 4;

fn batched<K, T>(loader: T) -> DataLoader<T>
where
    K: Send + Sync + std::hash::Hash + Eq + Clone + 'static,
    T: Loader<K>,
{
    DataLoader::new(loader, |batch| {
        tokio::spawn(async move {
            for _ in 0..BATCH_TURNS {
                tokio::task::yield_now().await;
            }
            batch.await;
        })
    })
    .delay(Duration::ZERO)
}

pub struct Loaders {
    snapshots: DataLoader<Snapshots>,
    extracts: DataLoader<Extracts>,
    bulk_rows: DataLoader<BulkRows>,
    rejected: DataLoader<RejectedRows>,
    plan_items: DataLoader<PlanItems>,
    /// On PostgreSQL: the page's views read at once, then answered from memory.
    bundles: Option<DataLoader<Bundles>>,
    prepared: std::sync::Mutex<Vec<Arc<Bundle>>>,
    /// On a SQLite file: its inline reads and writer.
    sqlite: Option<Arc<crate::sqlite_reads::SqliteReads>>,
    /// PostgreSQL's readers, and the views' snapshot writer they keep.
    postgres: Option<Arc<crate::pg_reads::PgReads>>,
}

impl Loaders {
    /// Fresh loaders (each request gets its own, so nothing is cached across requests).
    pub fn new(reader: &Reader) -> Self {
        // No timer: the default batching delay (1 ms on a timer thread) adds a millisecond of
        // latency and two thread wake-ups to every step of a budget's chain of reads. A batch
        // instead starts after the request's task has had a few turns to register the loads
        // of everyone on the page (they resolve together in that one task).
        Self {
            snapshots: batched(Snapshots(reader.clone())),
            extracts: batched(Extracts(reader.clone())),
            bulk_rows: batched(BulkRows(reader.clone())),
            rejected: batched(RejectedRows(reader.clone())),
            plan_items: batched(PlanItems(reader.clone())),
            bundles: (reader.get_database_backend() == DbBackend::Postgres)
                .then(|| batched(Bundles(reader.clone()))),
            prepared: std::sync::Mutex::new(Vec::new()),
            sqlite: reader.sqlite().cloned(),
            postgres: reader.postgres().cloned(),
        }
    }

    /// Keeps a bundle read with the request's person (see `persons::get_served_with_views`):
    /// a view it covers then reads nothing more before it asks.
    pub fn adopt(&self, bundle: Arc<Bundle>) {
        self.prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(bundle);
    }

    /// The first answer a prepared bundle has for a read.
    fn prepared<T>(&self, answer: impl Fn(&Bundle) -> Option<T>) -> Option<T> {
        self.prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find_map(|bundle| answer(bundle))
    }
}

#[async_trait::async_trait]
impl StoreReader for Loaders {
    async fn prepare(&self, person_id: &str, subjects: &[(String, String)]) -> ApiResult<()> {
        let Some(bundles) = &self.bundles else {
            return Ok(());
        };
        if self
            .prepared(|b| b.covers(person_id, subjects).then_some(()))
            .is_some()
        {
            return Ok(());
        }
        let bundle = bundles
            .load_one((person_id.to_owned(), subjects.to_vec()))
            .await
            .map_err(ApiError::unshare)?;
        if let Some(bundle) = bundle {
            self.prepared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(bundle);
        }
        Ok(())
    }

    async fn snapshot(
        &self,
        connector: &str,
        subject_key: &str,
    ) -> ApiResult<Option<(PersonRecords, SourceMeta)>> {
        if let Some(answer) = self.prepared(|b| b.snapshot(connector, subject_key)) {
            return Ok(answer);
        }
        self.snapshots
            .load_one((connector.to_owned(), subject_key.to_owned()))
            .await
            .map_err(ApiError::unshare)
    }

    async fn current_extract(&self, connector: &str) -> ApiResult<Option<bulk_extract::Model>> {
        if let Some(answer) = self.prepared(|b| b.current_extract(connector)) {
            return Ok(answer);
        }
        self.extracts
            .load_one(connector.to_owned())
            .await
            .map_err(ApiError::unshare)
    }

    async fn bulk_rows(
        &self,
        extract_id: &str,
        subject_key: &str,
    ) -> ApiResult<Vec<bulk_record::Model>> {
        if let Some(answer) = self.prepared(|b| b.bulk_rows(extract_id, subject_key)) {
            return Ok(answer);
        }
        Ok(self
            .bulk_rows
            .load_one((extract_id.to_owned(), subject_key.to_owned()))
            .await
            .map_err(ApiError::unshare)?
            .unwrap_or_default())
    }

    async fn rejected(
        &self,
        connector: &str,
        subject_key: &str,
    ) -> ApiResult<Vec<rejected_record::Model>> {
        if let Some(answer) = self.prepared(|b| b.rejected(connector, subject_key)) {
            return Ok(answer);
        }
        Ok(self
            .rejected
            .load_one((connector.to_owned(), subject_key.to_owned()))
            .await
            .map_err(ApiError::unshare)?
            .unwrap_or_default())
    }

    async fn store_snapshots(
        &self,
        db: &sea_orm::DatabaseConnection,
        fetched: &[(&str, &PersonRecords)],
    ) -> ApiResult<Kept> {
        if let Some(local) = &self.sqlite {
            return sources::store_snapshots_inline(db, local.writer(), fetched).await;
        }
        match self
            .postgres
            .as_ref()
            .and_then(|pg| pg.snapshot_writer.as_deref())
        {
            Some(writer) => sources::store_view_snapshots(db, writer, fetched).await,
            None => sources::store_snapshots(db, fetched).await,
        }
    }

    async fn plan_items(&self, person_id: &str) -> ApiResult<Vec<Item>> {
        if let Some(answer) = self.prepared(|b| b.plan_items(person_id)) {
            return Ok(answer);
        }
        Ok(self
            .plan_items
            .load_one(person_id.to_owned())
            .await
            .map_err(ApiError::unshare)?
            .unwrap_or_default())
    }
}
