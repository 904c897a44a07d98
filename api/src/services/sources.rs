//! The snapshot store between the connectors and the budget: every good fetch is stored, so a
//! partner that is down degrades its own stream to STALE (or UNAVAILABLE with nothing stored),
//! never the whole view. A person's connectors are asked concurrently, so a view waits for the
//! slowest partner, bounded by its timeout, never for the sum of them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use connectors::{Connector, IdentifierScheme, PersonRecords, Registry, Rejected, Shape, Subject};
use entities::{bulk_extract, bulk_record, rejected_record, upstream_snapshot};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QuerySelect,
};
use sha2::{Digest, Sha256};

use crate::budget::assemble::{SourceMeta, SourceStatus, StreamInput};
use crate::error::{ApiError, ApiResult};

/// What a fresh fetch did to the stored snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// The records differ from what was stored (or nothing was).
    Changed,
    /// The same records as last time.
    Unchanged,
}

/// Whether an answer's version marker is older than the stored one: a partner's "a higher
/// version replaces a lower one", compared as numbers where both are numbers.
pub fn is_older(answer: Option<&str>, stored: Option<&str>) -> bool {
    match (
        answer.and_then(|v| v.parse::<i64>().ok()),
        stored.and_then(|v| v.parse::<i64>().ok()),
    ) {
        (Some(answer), Some(stored)) => answer < stored,
        _ => false,
    }
}

/// SHA-256 of the canonical JSON of some records.
pub fn content_hash(json: &str) -> String {
    hex::encode(Sha256::digest(json.as_bytes()))
}

fn records_json(records: &PersonRecords) -> ApiResult<String> {
    serde_json::to_string(records).map_err(|e| ApiError::internal(e, "serialising fetched records"))
}

/// Stores good fetches as their subjects' snapshots (one row per connector and subject,
/// replaced whole, with rejected records kept aside) in one transaction: a view's partners
/// together, a sync's people in batches. Each replaces its subject's snapshot unless the stored
/// one is newer by the partner's version.
/// The stored versions are read inside the transaction, and on PostgreSQL the write checks
/// the row again as it stands (see [`upsert`]), so a lagging answer never overwrites a newer
/// snapshot written in between.
pub async fn store_snapshots(
    db: &DatabaseConnection,
    fetched: &[(&str, &PersonRecords)],
) -> ApiResult<Kept> {
    let prepared = prepare(fetched)?;
    let now = Utc::now();
    let write = crate::db::begin_write(db).await?;
    let txn = write.txn();
    // The stored versions and hashes of the whole batch, in one query a chunk, inside the
    // transaction: on SQLite nothing can slip in between the check and the write; on
    // PostgreSQL another session's write can, and `upsert` checks the row again.
    let (connectors, subjects) = keys(&prepared);
    let mut stored_now = Vec::new();
    for chunk in subjects.chunks(ROWS_A_STATEMENT) {
        use upstream_snapshot::Column;
        stored_now.extend(
            upstream_snapshot::Entity::find()
                .select_only()
                .columns([
                    Column::Connector,
                    Column::SubjectKey,
                    Column::Version,
                    Column::ContentHash,
                    Column::FetchedAt,
                ])
                .filter(Column::Connector.is_in(connectors.iter().copied()))
                .filter(Column::SubjectKey.is_in(chunk.iter().copied()))
                .into_tuple::<StoredVersion>()
                .all(txn)
                .await?,
        );
    }
    let (out, writes) = decide(&prepared, stored_now, now);
    for statement in write_statements(db.get_database_backend(), &writes, now) {
        txn.execute_raw(statement).await?;
    }
    write.commit().await?;
    Ok(out)
}

/// [`store_snapshots`] for one view's answers on PostgreSQL: in one statement on `writer` (see
/// `pg_snapshots`) when each (connector, subject) comes once, as in every view; otherwise
/// through the pool's transaction. Any other store keeps them through the pool.
pub async fn store_view_snapshots(
    db: &DatabaseConnection,
    writer: &impl ConnectionTrait,
    fetched: &[(&str, &PersonRecords)],
) -> ApiResult<Kept> {
    if writer.get_database_backend() != sea_orm::DbBackend::Postgres {
        return store_snapshots(db, fetched).await;
    }
    let prepared = prepare(fetched)?;
    if !crate::pg_snapshots::takes(&prepared) {
        return store_snapshots(db, fetched).await;
    }
    crate::pg_snapshots::store(writer, &prepared, Utc::now()).await
}

/// [`store_snapshots`] on a SQLite file, inline on `writer`'s connection (see
/// `sqlite_writes`): the same reads, decisions and statements, with no hand-off to sqlx's
/// connection thread. The writer does not wait for another process's write lock (it runs on
/// the request's own thread); when it cannot write at once, or fails, its transaction is rolled
/// back whole and the snapshots are stored through sea-orm instead.
pub async fn store_snapshots_inline(
    db: &DatabaseConnection,
    writer: &crate::sqlite_writes::SqliteWriter,
    fetched: &[(&str, &PersonRecords)],
) -> ApiResult<Kept> {
    let prepared = prepare(fetched)?;
    let now = Utc::now();
    // On the request's own thread, it never waits for another process's write lock.
    let inline = writer
        .transaction(std::time::Duration::ZERO, |w| {
            // Each (connector, subject key) looked up once (see `sqlite_reads::snapshots_of`).
            let mut pairs: Vec<(&str, &str)> = prepared
                .iter()
                .map(|p| (p.connector, p.records.subject_key.as_str()))
                .collect();
            pairs.sort_unstable();
            pairs.dedup();
            w.counted();
            let stored_now = crate::sqlite_reads::stored_versions(w.connection(), &pairs)?;
            let (out, writes) = decide(&prepared, stored_now, now);
            // The statement sea-query builds for these rows (see the test), prepared once a
            // row count and bound with the values borrowed: not built, with every snapshot's
            // JSON copied into it, on every view.
            let fetched_at = crate::sqlite_writes::sqlite_instant(now);
            let ids: Vec<String> = writes
                .iter()
                .map(|_| uuid::Uuid::now_v7().to_string())
                .collect();
            for (chunk, ids) in writes
                .chunks(ROWS_A_STATEMENT)
                .zip(ids.chunks(ROWS_A_STATEMENT))
            {
                let mut values: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(chunk.len() * 7);
                for (write, id) in chunk.iter().zip(ids) {
                    let p = write.prepared;
                    values.extend([
                        id as &dyn rusqlite::ToSql,
                        &p.connector,
                        &p.records.subject_key,
                        &p.records.version,
                        &p.hash,
                        &p.json,
                        &fetched_at,
                    ]);
                }
                w.counted();
                w.connection()
                    .prepare_cached(&sqlite_upsert_snapshots(chunk.len()))?
                    .execute(&*values)?;
            }
            for statement in rejected_statements(sea_orm::DbBackend::Sqlite, &writes, now) {
                w.execute(&statement)?;
            }
            Ok(out)
        })
        .await;
    match inline {
        Ok(out) => {
            crate::sqlite_reads::data_changed();
            Ok(out)
        }
        Err(error) => {
            INLINE_FALLBACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(error = %error, "storing snapshots inline failed; storing them through the pool");
            store_snapshots(db, fetched).await
        }
    }
}

/// How many times [`store_snapshots_inline`] left its snapshots to the pool in this process.
static INLINE_FALLBACKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many times the inline snapshot writer has left its snapshots to the pool (another
/// process held the store's write lock, or the inline write failed) since this process began.
pub fn inline_fallbacks() -> u64 {
    INLINE_FALLBACKS.load(std::sync::atomic::Ordering::Relaxed)
}

/// One fetch to store, serialised.
pub(crate) struct Prepared<'a> {
    pub(crate) connector: &'a str,
    pub(crate) records: &'a PersonRecords,
    /// The records as stored (JSON).
    pub(crate) json: String,
    /// Their [`content_hash`].
    pub(crate) hash: String,
}

fn prepare<'a>(fetched: &[(&'a str, &'a PersonRecords)]) -> ApiResult<Vec<Prepared<'a>>> {
    fetched
        .iter()
        .map(|&(connector, records)| {
            let json = records_json(records)?;
            let hash = content_hash(&json);
            Ok(Prepared {
                connector,
                records,
                json,
                hash,
            })
        })
        .collect()
}

/// The connectors (each once) and subjects of a batch, whose stored snapshots are read.
fn keys<'a>(prepared: &[Prepared<'a>]) -> (Vec<&'a str>, Vec<&'a str>) {
    let mut connectors: Vec<&str> = prepared.iter().map(|p| p.connector).collect();
    connectors.sort_unstable();
    connectors.dedup();
    let subjects = prepared
        .iter()
        .map(|p| p.records.subject_key.as_str())
        .collect();
    (connectors, subjects)
}

/// What keeping a batch of answers gives back: each answer's source, and whether it changed
/// what was stored.
pub type Kept = Vec<(SourceMeta, Stored)>;

/// A stored snapshot as a writer compares an answer with it: connector, subject key,
/// version, content hash and when it was fetched.
pub type StoredVersion = (String, String, Option<String>, String, DateTime<Utc>);

/// Decides every answer of a batch against the snapshots stored now: what each stream
/// serves, and what is written. A key that comes twice in one batch is written once, as the
/// later answer, checked against the earlier one as if that had been stored first.
fn decide<'p, 'a>(
    prepared: &'p [Prepared<'a>],
    stored_now: Vec<StoredVersion>,
    now: DateTime<Utc>,
) -> (Vec<(SourceMeta, Stored)>, Vec<Write<'p, 'a>>) {
    type Key = (String, String);
    let stored_now: HashMap<Key, (Option<String>, String, DateTime<Utc>)> = stored_now
        .into_iter()
        .map(|(connector, subject, version, hash, at)| ((connector, subject), (version, hash, at)))
        .collect();
    let mut out = Vec::with_capacity(prepared.len());
    let mut writes: Vec<Write<'p, 'a>> = Vec::new();
    let mut pending: HashMap<(&str, &str), usize> = HashMap::new();
    for p in prepared {
        let (connector, records, hash) = (p.connector, p.records, p.hash.as_str());
        let key = (connector, records.subject_key.as_str());
        let earlier = pending.get(&key).map(|&i| &writes[i]);
        let previous: Option<(Option<&str>, &str, DateTime<Utc>)> = match earlier {
            Some(w) => Some((
                w.prepared.records.version.as_deref(),
                w.prepared.hash.as_str(),
                now,
            )),
            None => stored_now
                .get(&(connector.to_owned(), records.subject_key.clone()))
                .map(|(version, hash, at)| (version.as_deref(), hash.as_str(), *at)),
        };
        if let Some((version, stored_hash, fetched_at)) = previous
            && is_older(records.version.as_deref(), version)
        {
            // A lagging answer never replaces a newer snapshot.
            tracing::info!(stream = %connector, "an answer older than the stored snapshot was kept out");
            out.push((
                SourceMeta {
                    connector: connector.to_owned(),
                    version: version.map(str::to_owned),
                    fetched_at,
                    content_hash: stored_hash.to_owned(),
                },
                Stored::Unchanged,
            ));
            continue;
        }
        let stored = match previous {
            Some((_, stored_hash, _)) if stored_hash == hash => Stored::Unchanged,
            _ => Stored::Changed,
        };
        // Rejected records are kept per stored snapshot: with no snapshot before, there are
        // none to replace, only the new ones to add.
        let replace_rejected =
            stored == Stored::Changed && (previous.is_some() || !records.rejected.is_empty());
        out.push((
            SourceMeta {
                connector: connector.to_owned(),
                version: records.version.clone(),
                fetched_at: now,
                content_hash: hash.to_owned(),
            },
            stored,
        ));
        let write = Write {
            prepared: p,
            replace_rejected: replace_rejected || earlier.is_some_and(|w| w.replace_rejected),
        };
        match pending.get(&key) {
            Some(&i) => writes[i] = write,
            None => {
                pending.insert(key, writes.len());
                writes.push(write);
            }
        }
    }
    (out, writes)
}

/// One snapshot [`decide`] writes.
struct Write<'p, 'a> {
    prepared: &'p Prepared<'a>,
    /// Whether the subject's kept rejected records are replaced by these records' own.
    replace_rejected: bool,
}

/// Rows a statement carries at most (PostgreSQL binds at most 65,535 values a statement).
const ROWS_A_STATEMENT: usize = 500;

/// The statements that write snapshots (each key once) and replace the rejected records of
/// those that say so, a few statements for the lot, built for `backend`.
fn write_statements(
    backend: sea_orm::DbBackend,
    writes: &[Write<'_, '_>],
    now: DateTime<Utc>,
) -> Vec<sea_orm::Statement> {
    let mut statements = upsert_statements(backend, writes, now);
    statements.extend(rejected_statements(backend, writes, now));
    statements
}

/// The text of the statement that writes `rows` snapshots on SQLite, each row's values in the
/// entity's column order (id, connector, subject key, version, content hash, records, fetched
/// at): [`upsert`]'s, built once a row count (the text does not depend on the values).
fn sqlite_upsert_snapshots(rows: usize) -> std::sync::Arc<str> {
    static TEXTS: std::sync::LazyLock<std::sync::Mutex<HashMap<usize, std::sync::Arc<str>>>> =
        std::sync::LazyLock::new(Default::default);
    let mut texts = TEXTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    texts
        .entry(rows)
        .or_insert_with(|| {
            let placeholder = upstream_snapshot::ActiveModel {
                id: Set(String::new()),
                connector: Set(String::new()),
                subject_key: Set(String::new()),
                version: Set(None),
                content_hash: Set(String::new()),
                records: Set(String::new()),
                fetched_at: Set(DateTime::<Utc>::default()),
            };
            upsert(vec![placeholder; rows], sea_orm::DbBackend::Sqlite)
                .sql
                .into()
        })
        .clone()
}

/// The statement that writes `rows` (each key once), replacing a stored snapshot of the same
/// connector and subject, built for `backend`.
///
/// On PostgreSQL it replaces a stored snapshot only where that is not newer by the partner's
/// version, judged on the row as it stands when written. [`store_snapshots`] read the stored
/// versions first, in its transaction, but on PostgreSQL a writer in another session (a view
/// keeping its answers while a `tributary sync` stores a batch, say) can commit a newer
/// snapshot between that read and this write; without the check this older answer replaced
/// it. (`pg_snapshots` decides the same way, in its one statement.) In that race what the
/// transaction reports (its answer kept) and the rejected records it replaced are still the
/// older answer's, until the subject is next written. On SQLite the write lock keeps other
/// writers out for the whole transaction, so what was read still stands.
fn upsert(
    rows: Vec<upstream_snapshot::ActiveModel>,
    backend: sea_orm::DbBackend,
) -> sea_orm::Statement {
    use sea_orm::QueryTrait;
    let mut on_conflict = OnConflict::columns([
        upstream_snapshot::Column::Connector,
        upstream_snapshot::Column::SubjectKey,
    ]);
    on_conflict.update_columns([
        upstream_snapshot::Column::Version,
        upstream_snapshot::Column::ContentHash,
        upstream_snapshot::Column::Records,
        upstream_snapshot::Column::FetchedAt,
    ]);
    if backend == sea_orm::DbBackend::Postgres {
        on_conflict.action_and_where(sea_orm::sea_query::Expr::cust(format!(
            "NOT {}",
            crate::pg_snapshots::older("excluded.version", "upstream_snapshots.version")
        )));
    }
    upstream_snapshot::Entity::insert_many(rows)
        .on_conflict(on_conflict)
        .build(backend)
}

/// The statements that write `writes`' snapshots (each key once), a few rows a statement.
fn upsert_statements(
    backend: sea_orm::DbBackend,
    writes: &[Write<'_, '_>],
    now: DateTime<Utc>,
) -> Vec<sea_orm::Statement> {
    let rows: Vec<upstream_snapshot::ActiveModel> = writes
        .iter()
        .map(|w| upstream_snapshot::ActiveModel {
            id: Set(uuid::Uuid::now_v7().to_string()),
            connector: Set(w.prepared.connector.to_owned()),
            subject_key: Set(w.prepared.records.subject_key.clone()),
            version: Set(w.prepared.records.version.clone()),
            content_hash: Set(w.prepared.hash.clone()),
            records: Set(w.prepared.json.clone()),
            fetched_at: Set(now),
        })
        .collect();
    rows.chunks(ROWS_A_STATEMENT)
        .map(|chunk| upsert(chunk.to_vec(), backend))
        .collect()
}

/// The statements that replace the kept rejected records of the `writes` that say so.
fn rejected_statements(
    backend: sea_orm::DbBackend,
    writes: &[Write<'_, '_>],
    now: DateTime<Utc>,
) -> Vec<sea_orm::Statement> {
    use sea_orm::QueryTrait;
    let mut statements = Vec::new();
    let mut replaced: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut rejected_rows = Vec::new();
    for w in writes.iter().filter(|w| w.replace_rejected) {
        let records = w.prepared.records;
        replaced
            .entry(w.prepared.connector)
            .or_default()
            .push(records.subject_key.as_str());
        rejected_rows.extend(rejected_models(
            w.prepared.connector,
            Some(&records.subject_key),
            &records.rejected,
            now,
        ));
    }
    for (connector, subjects) in replaced {
        for chunk in subjects.chunks(ROWS_A_STATEMENT) {
            statements.push(
                rejected_record::Entity::delete_many()
                    .filter(rejected_record::Column::Connector.eq(connector))
                    .filter(rejected_record::Column::SubjectKey.is_in(chunk.iter().copied()))
                    .build(backend),
            );
        }
    }
    for chunk in rejected_rows.chunks(ROWS_A_STATEMENT) {
        statements.push(rejected_record::Entity::insert_many(chunk.to_vec()).build(backend));
    }
    statements
}

/// The rows keeping `rejected` for `connector` (and `subject_key`, where a record names none).
fn rejected_models(
    connector: &str,
    subject_key: Option<&str>,
    rejected: &[Rejected],
    at: DateTime<Utc>,
) -> Vec<rejected_record::ActiveModel> {
    rejected
        .iter()
        .map(|r| rejected_record::ActiveModel {
            id: Set(uuid::Uuid::now_v7().to_string()),
            connector: Set(connector.to_owned()),
            subject_key: Set(r
                .subject_key
                .clone()
                .or_else(|| subject_key.map(str::to_owned))),
            upstream_id: Set(r.upstream_id.clone()),
            line_number: Set(r.line.and_then(|l| i64::try_from(l).ok())),
            reason: Set(r.reason.clone()),
            raw: Set(r.raw.clone()),
            fetched_at: Set(at),
        })
        .collect()
}

/// Replaces the rejected records kept for one subject (or, with `None`, for a whole bulk
/// extract) with `rejected`.
pub async fn replace_rejected(
    db: &impl ConnectionTrait,
    connector: &str,
    subject_key: Option<&str>,
    rejected: &[Rejected],
    at: DateTime<Utc>,
) -> ApiResult<()> {
    let mut delete = rejected_record::Entity::delete_many()
        .filter(rejected_record::Column::Connector.eq(connector));
    delete = match subject_key {
        Some(key) => delete.filter(rejected_record::Column::SubjectKey.eq(key)),
        None => delete,
    };
    delete.exec(db).await?;
    let rows = rejected_models(connector, subject_key, rejected, at);
    for chunk in rows.chunks(ROWS_A_STATEMENT) {
        rejected_record::Entity::insert_many(chunk.to_vec())
            .exec(db)
            .await?;
    }
    Ok(())
}

async fn load_snapshot(
    db: &DatabaseConnection,
    connector: &str,
    subject_key: &str,
) -> ApiResult<Option<(PersonRecords, SourceMeta)>> {
    Ok(upstream_snapshot::Entity::find()
        .filter(upstream_snapshot::Column::Connector.eq(connector))
        .filter(upstream_snapshot::Column::SubjectKey.eq(subject_key))
        .one(db)
        .await?
        .and_then(usable_snapshot))
}

/// Reads from the snapshot store. Services read directly; the GraphQL layer hands in a reader
/// that batches the reads of a whole request (DataLoader), so resolving many people's budgets
/// costs a fixed number of queries, not a few per person.
#[async_trait::async_trait]
pub trait StoreReader: Send + Sync {
    /// Told, before a view of `person_id` asks for anything, every (connector, subject key)
    /// it may ask about, so a reader that can fetch them together does. Others do nothing.
    async fn prepare(&self, _person_id: &str, _subjects: &[(String, String)]) -> ApiResult<()> {
        Ok(())
    }
    /// The stored snapshot of one subject from one live connector.
    async fn snapshot(
        &self,
        connector: &str,
        subject_key: &str,
    ) -> ApiResult<Option<(PersonRecords, SourceMeta)>>;
    /// A bulk connector's current extract.
    async fn current_extract(&self, connector: &str) -> ApiResult<Option<bulk_extract::Model>>;
    /// One subject's records in an extract.
    async fn bulk_rows(
        &self,
        extract_id: &str,
        subject_key: &str,
    ) -> ApiResult<Vec<bulk_record::Model>>;
    /// Rejected records kept for one subject of one connector.
    async fn rejected(
        &self,
        connector: &str,
        subject_key: &str,
    ) -> ApiResult<Vec<rejected_record::Model>>;
    /// A person's plan items with their shares.
    async fn plan_items(&self, person_id: &str) -> ApiResult<Vec<crate::services::plan::Item>>;
    /// Stores a view's good answers as snapshots (see [`store_snapshots`]); a reader with a
    /// cheaper way to write its store uses that.
    async fn store_snapshots(
        &self,
        db: &DatabaseConnection,
        fetched: &[(&str, &PersonRecords)],
    ) -> ApiResult<Kept> {
        store_snapshots(db, fetched).await
    }
}

/// Reads the store one query at a time.
#[derive(Debug, Clone, Copy)]
pub struct DirectStore<'a>(pub &'a DatabaseConnection);

#[async_trait::async_trait]
impl StoreReader for DirectStore<'_> {
    async fn snapshot(
        &self,
        connector: &str,
        subject_key: &str,
    ) -> ApiResult<Option<(PersonRecords, SourceMeta)>> {
        load_snapshot(self.0, connector, subject_key).await
    }

    async fn current_extract(&self, connector: &str) -> ApiResult<Option<bulk_extract::Model>> {
        Ok(bulk_extract::Entity::find()
            .filter(bulk_extract::Column::Connector.eq(connector))
            .filter(bulk_extract::Column::Current.eq(true))
            .one(self.0)
            .await?)
    }

    async fn bulk_rows(
        &self,
        extract_id: &str,
        subject_key: &str,
    ) -> ApiResult<Vec<bulk_record::Model>> {
        Ok(bulk_record::Entity::find()
            .filter(bulk_record::Column::ExtractId.eq(extract_id))
            .filter(bulk_record::Column::SubjectKey.eq(subject_key))
            .all(self.0)
            .await?)
    }

    async fn rejected(
        &self,
        connector: &str,
        subject_key: &str,
    ) -> ApiResult<Vec<rejected_record::Model>> {
        Ok(rejected_record::Entity::find()
            .filter(rejected_record::Column::Connector.eq(connector))
            .filter(rejected_record::Column::SubjectKey.eq(subject_key))
            .all(self.0)
            .await?)
    }

    async fn plan_items(&self, person_id: &str) -> ApiResult<Vec<crate::services::plan::Item>> {
        Ok(
            crate::services::plan::for_people(self.0, &[person_id.to_owned()])
                .await?
                .remove(person_id)
                .unwrap_or_default(),
        )
    }
}

/// A stored snapshot row as a view reads it: `None` when its records cannot be decoded. Such a
/// row holds nothing a view could serve, so the view treats the stream as having no snapshot:
/// it asks the partner, and a good answer replaces the row. Had it failed the read instead,
/// one damaged row would cost the person their whole budget. Logged by stream only: a subject
/// key holds a person's identifier, and the decoder's message can quote the row's values.
pub fn usable_snapshot(row: upstream_snapshot::Model) -> Option<(PersonRecords, SourceMeta)> {
    let Ok(records) = serde_json::from_str::<PersonRecords>(&row.records) else {
        tracing::warn!(
            stream = %row.connector,
            "a stored snapshot cannot be read; the view asks the partner instead"
        );
        return None;
    };
    Some((
        records,
        SourceMeta {
            connector: row.connector,
            version: row.version,
            fetched_at: row.fetched_at,
            content_hash: row.content_hash,
        },
    ))
}

fn input(connector: &dyn Connector, status: SourceStatus) -> StreamInput {
    let settings = connector.settings();
    StreamInput {
        id: settings.id.0.clone(),
        name: settings.display_name().to_owned(),
        kind: settings.kind.as_str().to_owned(),
        status,
        source: None,
        records: None,
        rejected: Vec::new(),
        yearly_cap: settings.yearly_cap,
        problem: None,
    }
}

fn with_records(mut stream: StreamInput, records: PersonRecords, meta: SourceMeta) -> StreamInput {
    stream.rejected = records.rejected.clone();
    stream.records = Some(records);
    stream.source = Some(meta);
    stream
}

/// What asking one live stream came to, before anything is stored.
enum Asked {
    /// Served as it is: a young snapshot, a newer stored one, a stale one after a failure, or
    /// nothing.
    Done(StreamInput),
    /// A good answer, stored with the view's other answers in one transaction (see [`keep`]).
    Fetched(StreamInput, PersonRecords),
}

/// One live stream for one person: a young snapshot is served as it is; otherwise the partner
/// is asked, and if it fails the last snapshot is served STALE.
///
/// `early` is the partner's answer when it was asked before the store was read (see
/// [`gather`]). Then the snapshot is read only if the partner failed: an answer is kept with
/// the view's others, and one older than the stored snapshot is found out there (see
/// [`keep`]). An uncached view whose partners answer so reads none of their snapshots, which
/// were most of its reads of the store (each a whole record set, never served).
async fn live(
    store: &dyn StoreReader,
    connector: &dyn Connector,
    subject: &Subject,
    early: Option<Result<PersonRecords, connectors::ConnectorError>>,
) -> ApiResult<Asked> {
    let id = connector.settings().id.0.clone();
    let key = subject.key();
    if let Some(answer) = early {
        return match answer {
            Ok(records) => Ok(Asked::Fetched(
                input(connector, SourceStatus::Fresh),
                records,
            )),
            Err(error) => {
                let snapshot = store.snapshot(&id, &key).await?;
                Ok(Asked::Done(unanswered(connector, snapshot, &error)))
            }
        };
    }
    let snapshot = store.snapshot(&id, &key).await?;
    let ttl = chrono::Duration::seconds(
        i64::try_from(connector.settings().cache_ttl_secs).unwrap_or(i64::MAX / 2),
    );
    let young =
        |meta: &SourceMeta| ttl > chrono::Duration::zero() && Utc::now() - meta.fetched_at < ttl;
    let snapshot = match snapshot {
        Some((records, meta)) if young(&meta) => {
            return Ok(Asked::Done(with_records(
                input(connector, SourceStatus::Fresh),
                records,
                meta,
            )));
        }
        other => other,
    };
    match connector.fetch(subject).await {
        Ok(records)
            if let Some((stored, meta)) = snapshot.as_ref().filter(|(_, meta)| {
                is_older(records.version.as_deref(), meta.version.as_deref())
            }) =>
        {
            // The partner answered with an older version than the one already held: the
            // newer snapshot stands.
            Ok(Asked::Done(with_records(
                input(connector, SourceStatus::Fresh),
                stored.clone(),
                meta.clone(),
            )))
        }
        Ok(records) => Ok(Asked::Fetched(
            input(connector, SourceStatus::Fresh),
            records,
        )),
        Err(error) => Ok(Asked::Done(unanswered(connector, snapshot, &error))),
    }
}

/// A live stream whose partner failed: its last snapshot, STALE, or UNAVAILABLE without one.
fn unanswered(
    connector: &dyn Connector,
    snapshot: Option<(PersonRecords, SourceMeta)>,
    error: &connectors::ConnectorError,
) -> StreamInput {
    tracing::warn!(stream = %connector.settings().id, error = %error, "partner fetch failed");
    let mut stream = match snapshot {
        Some((records, meta)) => with_records(input(connector, SourceStatus::Stale), records, meta),
        None => input(connector, SourceStatus::Unavailable),
    };
    stream.problem = Some(error.to_string());
    stream
}

/// One bulk stream for one person: read from the loaded extract, never downloaded per query.
async fn bulk(
    store: &dyn StoreReader,
    connector: &dyn Connector,
    subject: &Subject,
) -> ApiResult<StreamInput> {
    let id = connector.settings().id.0.clone();
    let key = subject.key();
    let Some(extract) = store.current_extract(&id).await? else {
        let mut stream = input(connector, SourceStatus::Unavailable);
        stream.problem = Some("its extract has not been loaded yet".into());
        return Ok(stream);
    };
    let rows = store.bulk_rows(&extract.id, &key).await?;
    let mut awards = Vec::with_capacity(rows.len());
    for row in rows {
        awards.push(
            serde_json::from_str(&row.record)
                .map_err(|e| ApiError::internal(e, "a stored extract record cannot be read"))?,
        );
    }
    // An extract's rejected rows are all stored with it, and counted: when it rejected none,
    // there is nothing to read (on PostgreSQL, a round trip saved on every view).
    let kept = if extract.rejected_count > 0 {
        store.rejected(&id, &key).await?
    } else {
        Vec::new()
    };
    let rejected = kept
        .into_iter()
        .map(|r| Rejected {
            upstream_id: r.upstream_id,
            subject_key: r.subject_key,
            line: r.line_number.and_then(|l| u64::try_from(l).ok()),
            reason: r.reason,
            raw: r.raw,
        })
        .collect();
    let records = PersonRecords {
        subject_key: key,
        version: extract
            .etag
            .as_deref()
            .map(|t| t.trim_matches('"').to_owned()),
        awards,
        payments: Vec::new(),
        rejected,
        ambiguities: Vec::new(),
    };
    let freshness = chrono::Duration::seconds(
        i64::try_from(connector.settings().freshness_secs).unwrap_or(i64::MAX / 2),
    );
    let stale = Utc::now() - extract.loaded_at > freshness;
    let meta = SourceMeta {
        connector: id,
        version: extract.etag.map(|t| t.trim_matches('"').to_owned()),
        fetched_at: extract.loaded_at,
        content_hash: extract.content_hash,
    };
    let mut stream = with_records(
        input(
            connector,
            if stale {
                SourceStatus::Stale
            } else {
                SourceStatus::Fresh
            },
        ),
        records,
        meta,
    );
    if stale {
        stream.problem = Some("its last extract is older than the stream's freshness limit".into());
    }
    Ok(stream)
}

/// The connectors a view asks, in configuration order, each with the subject it asks about:
/// those within `allowed` (all when `None`; an agency's consented streams) that know one of
/// the person's identifiers.
pub fn asked<'a>(
    registry: &'a Registry,
    identifiers: &'a [(IdentifierScheme, String)],
    allowed: Option<&'a [String]>,
) -> impl Iterator<Item = (&'a std::sync::Arc<dyn Connector>, Subject)> + 'a {
    registry
        .all()
        .filter(move |c| {
            allowed.is_none_or(|ids| ids.iter().any(|id| id == c.settings().id.as_str()))
        })
        .filter_map(|connector| Some((connector, connector.subject(identifiers)?)))
}

/// Whether a live connector's snapshots are never young (`cache_ttl_secs = 0`), so its partner
/// is asked on every view whatever the store holds.
pub(crate) fn always_asked(connector: &dyn Connector) -> bool {
    connector.shape() == Shape::Live && connector.settings().cache_ttl_secs == 0
}

/// The streams of the connectors `asked` (see [`asked`]) for `person_id`, gathered
/// concurrently, in that order.
///
/// The store is told first what the view will read (`StoreReader::prepare`: on PostgreSQL, one
/// round trip for everything), and every stream reads it once that is done. A partner asked
/// on every view (see [`always_asked`]) is asked at once, while the store is read: nothing the
/// store holds can spare the call, so its answer does not wait for the read (on PostgreSQL
/// half a millisecond of every uncached view). Its snapshot is left out of that read, and
/// read only if it is needed (see [`live`]).
///
/// `record` records the view's read in the audit log. When a partner is asked on every view
/// (see [`always_asked`]), it runs while the partners are asked: the view will be served
/// whatever they answer (one that fails is served STALE or UNAVAILABLE), so its read is
/// certain from the start, and its commit (on PostgreSQL a round trip and a wait for the
/// log's flush, the largest part of an uncached view's time in the hub) is made while the
/// view waits for the partners rather than after they answered. Otherwise, when partners
/// were asked, it runs while their answers are kept: the view is served from then on whatever
/// the keeping does (a store that cannot keep them degrades only the keeping), so the two
/// commits need not follow one another (the snapshots' does not wait for its flush, see
/// `pg_reads`). It is left unpolled otherwise, for the caller to record the read once the
/// view is ready; the answer says whether it ran. It fails the view when it fails: no data
/// leaves without its read recorded. (Recorded early, a read whose view then fails, which
/// only a store that cannot be read makes happen, stays in the log: an access that was
/// allowed and tried, never one that went unrecorded.)
pub async fn gather(
    db: &DatabaseConnection,
    store: &dyn StoreReader,
    person_id: &str,
    asked: &[(&std::sync::Arc<dyn Connector>, Subject)],
    record: Option<RecordRead<'_>>,
) -> ApiResult<(Vec<StreamInput>, bool)> {
    use futures::FutureExt as _;
    // A partner asked at once has its snapshot read only if it fails (see `live`).
    let subjects: Vec<(String, String)> = asked
        .iter()
        .filter(|(connector, _)| !always_asked(connector.as_ref()))
        .map(|(connector, subject)| (connector.settings().id.0.clone(), subject.key()))
        .collect();
    let prepared = async {
        store
            .prepare(person_id, &subjects)
            .await
            .map_err(std::sync::Arc::new)
    }
    .boxed()
    .shared();
    let tasks = asked.iter().map(|(connector, subject)| {
        let prepared = prepared.clone();
        async move {
            let early = async {
                if always_asked(connector.as_ref()) {
                    Some(connector.fetch(subject).await)
                } else {
                    None
                }
            };
            let (ready, early) = futures::join!(prepared, early);
            ready.map_err(ApiError::unshare)?;
            match connector.shape() {
                Shape::Live => live(store, connector.as_ref(), subject, early).await,
                Shape::Bulk => bulk(store, connector.as_ref(), subject)
                    .await
                    .map(Asked::Done),
            }
        }
    });
    // A view that asks a partner whatever the store holds records its read meanwhile.
    let (answers, record, early) = match record {
        Some(record) if asked.iter().any(|(c, _)| always_asked(c.as_ref())) => {
            let (answers, recorded) = futures::join!(futures::future::join_all(tasks), record);
            (answers, None, Some(recorded))
        }
        record => (futures::future::join_all(tasks).await, record, None),
    };
    let mut streams = Vec::new();
    let mut fetched = Vec::new();
    for asked in answers {
        match asked? {
            Asked::Done(stream) => streams.push(Some(stream)),
            Asked::Fetched(stream, records) => {
                fetched.push((streams.len(), stream, records));
                streams.push(None);
            }
        }
    }
    let (kept, recorded) = match (record, early) {
        (Some(record), None) if !fetched.is_empty() => {
            let (kept, recorded) = futures::join!(keep(db, store, fetched), record);
            recorded?;
            (kept?, true)
        }
        (_, Some(recorded)) => {
            // The partners' answers are kept even when the read could not be recorded (the
            // view then fails), as they would be had it been recorded while they were kept.
            let kept = keep(db, store, fetched).await;
            recorded?;
            (kept?, true)
        }
        (_, None) => (keep(db, store, fetched).await?, false),
    };
    for (at, stream) in kept {
        streams[at] = Some(stream);
    }
    Ok((streams.into_iter().flatten().collect(), recorded))
}

/// Records a view's read in the audit log (see [`gather`]).
pub type RecordRead<'a> = futures::future::BoxFuture<'a, ApiResult<()>>;

/// Stores a view's good answers as snapshots in one transaction (one write turn, one commit,
/// not one for each partner) and completes their streams. The partners answered: a store that
/// cannot keep the snapshots now degrades only the keeping, not the answers.
async fn keep(
    db: &DatabaseConnection,
    store: &dyn StoreReader,
    fetched: Vec<(usize, StreamInput, PersonRecords)>,
) -> ApiResult<Vec<(usize, StreamInput)>> {
    if fetched.is_empty() {
        return Ok(Vec::new());
    }
    let batch: Vec<(&str, &PersonRecords)> = fetched
        .iter()
        .map(|(_, stream, records)| (stream.id.as_str(), records))
        .collect();
    let metas = match store.store_snapshots(db, &batch).await {
        Ok(stored) => stored.into_iter().map(|(meta, _)| meta).collect(),
        Err(error) => {
            tracing::warn!(error = %error, "storing snapshots failed; serving the answers unstored");
            let mut metas = Vec::with_capacity(fetched.len());
            for (_, stream, records) in &fetched {
                metas.push(SourceMeta {
                    connector: stream.id.clone(),
                    version: records.version.clone(),
                    fetched_at: Utc::now(),
                    content_hash: content_hash(&records_json(records)?),
                });
            }
            metas
        }
    };
    let mut kept = Vec::with_capacity(fetched.len());
    for ((at, stream, records), meta) in fetched.into_iter().zip(metas) {
        // Kept out: the stored snapshot is newer than the answer (its version is the one
        // served), and it stands.
        if meta.version != records.version
            && let Some((stored, stored_meta)) =
                store.snapshot(&stream.id, &records.subject_key).await?
        {
            kept.push((at, with_records(stream, stored, stored_meta)));
            continue;
        }
        kept.push((at, with_records(stream, records, meta)));
    }
    Ok(kept)
}

/// One award as last stored (never asking the partner), with its entitlement in `window`:
/// the trace from a plan share to the snapshot that held its award.
pub async fn stored_award(
    db: &DatabaseConnection,
    registry: &Registry,
    identifiers: &[(IdentifierScheme, String)],
    award_id: &str,
    window: &crate::budget::period::Window,
) -> ApiResult<Option<crate::budget::assemble::AwardView>> {
    let Some((stream_id, _)) = award_id.split_once(':') else {
        return Ok(None);
    };
    let Some(connector) = registry.get(stream_id) else {
        return Ok(None);
    };
    let Some(subject) = connector.subject(identifiers) else {
        return Ok(None);
    };
    let stream = match connector.shape() {
        Shape::Bulk => bulk(&DirectStore(db), connector.as_ref(), &subject).await?,
        Shape::Live => match load_snapshot(db, stream_id, &subject.key()).await? {
            Some((records, meta)) => with_records(
                input(connector.as_ref(), SourceStatus::Fresh),
                records,
                meta,
            ),
            None => return Ok(None),
        },
    };
    let view =
        crate::budget::assemble::assemble(*window, Utc::now().date_naive(), vec![stream], &[]);
    Ok(view
        .streams
        .into_iter()
        .flat_map(|s| s.awards)
        .find(|a| a.id == award_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inline_snapshot_statement_is_the_one_sea_query_builds_for_a_row() {
        let records = PersonRecords {
            subject_key: "NINO:AB123456C".into(),
            version: Some("7".into()),
            ..PersonRecords::default()
        };
        let other = PersonRecords {
            subject_key: "NHS_NUMBER:9434765919".into(),
            ..PersonRecords::default()
        };
        let prepared = prepare(&[("access-to-work", &records), ("phb", &other)]).unwrap();
        let writes: Vec<Write> = prepared
            .iter()
            .map(|p| Write {
                prepared: p,
                replace_rejected: false,
            })
            .collect();
        let now = Utc::now();
        for rows in [1, 2] {
            let built = upsert_statements(sea_orm::DbBackend::Sqlite, &writes[..rows], now);
            assert_eq!(built.len(), 1);
            assert_eq!(built[0].sql.as_str(), &*sqlite_upsert_snapshots(rows));
            assert_eq!(built[0].values.as_ref().unwrap().0.len(), 7 * rows);
        }
        let built = upsert_statements(sea_orm::DbBackend::Sqlite, &writes[..1], now);
        // The values in the order the inline writer binds them (the id is fresh each time).
        let values = &built[0].values.as_ref().unwrap().0;
        let text = |v: &sea_orm::Value| match v {
            sea_orm::Value::String(s) => s.clone(),
            other => panic!("not text: {other:?}"),
        };
        assert_eq!(values.len(), 7);
        assert_eq!(text(&values[1]).as_deref(), Some("access-to-work"));
        assert_eq!(text(&values[2]).as_deref(), Some("NINO:AB123456C"));
        assert_eq!(text(&values[3]).as_deref(), Some("7"));
        assert_eq!(text(&values[4]), Some(prepared[0].hash.clone()));
        assert_eq!(text(&values[5]), Some(prepared[0].json.clone()));
        assert_eq!(values[6], sea_orm::Value::ChronoDateTimeUtc(Some(now)));
        assert!(rejected_statements(sea_orm::DbBackend::Sqlite, &writes, now).is_empty());
        let two = upsert_statements(sea_orm::DbBackend::Sqlite, &writes, now);
        assert_eq!(
            two[0].values.as_ref().unwrap().0[7 + 3],
            sea_orm::Value::String(None),
            "no version: NULL"
        );
    }

    #[test]
    fn versions_compare_as_numbers() {
        assert!(is_older(Some("7"), Some("12")));
        assert!(!is_older(Some("12"), Some("7")));
        assert!(!is_older(Some("7"), Some("7")));
        assert!(!is_older(None, Some("7")));
        assert!(!is_older(Some("abc"), Some("7")));
    }
}
