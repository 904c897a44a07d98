//! Loading a bulk extract (the ILF file) into the hub's store: parsed as a stream on a
//! blocking thread, inserted in batches inside one transaction, and swapped in whole. A refused
//! file leaves the previous extract in use.

use chrono::Utc;
use connectors::ilf::{Row, parse_extract};
use connectors::{Connector, ConnectorError, Extract, Rejected};
use entities::{bulk_extract, bulk_record};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseBackend,
    DatabaseConnection, EntityTrait, QueryFilter, Statement,
};

use crate::error::{ApiError, ApiResult};
use crate::services::sources::{content_hash, replace_rejected};

/// What one extract sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtractOutcome {
    /// The partner's file is unchanged since the one loaded.
    Unchanged,
    /// A new extract was loaded and is now current.
    Loaded {
        /// Rows loaded.
        rows: u64,
        /// Rows rejected (kept aside with their reasons).
        rejected: u64,
    },
    /// The file was refused whole; the previous extract stays in use.
    Refused(String),
    /// The partner could not be reached.
    Failed(String),
}

const BATCH: usize = 1000;

/// Takes, for the rest of its transaction, PostgreSQL's advisory lock on swapping in an
/// extract of connector `$1`: a second load's swap waits until the first has committed.
pub const EXTRACT_SWAP_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('tributary.extract:' || $1, 0))";

enum Batch {
    Rows(Vec<(String, connectors::Award)>),
    Rejected(Vec<Rejected>),
}

/// Downloads the connector's extract if it changed, and loads it.
pub async fn sync_extract(
    db: &DatabaseConnection,
    connector: &dyn Connector,
) -> ApiResult<ExtractOutcome> {
    let id = connector.settings().id.0.clone();
    let current = bulk_extract::Entity::find()
        .filter(bulk_extract::Column::Connector.eq(&id))
        .filter(bulk_extract::Column::Current.eq(true))
        .one(db)
        .await?;
    let extract = match connector
        .download(current.as_ref().and_then(|c| c.etag.as_deref()))
        .await
    {
        Ok(extract) => extract,
        Err(e) => return Ok(ExtractOutcome::Failed(e.to_string())),
    };
    let Extract::File {
        file,
        etag,
        content_hash: file_hash,
    } = extract
    else {
        return Ok(ExtractOutcome::Unchanged);
    };
    if current
        .as_ref()
        .is_some_and(|c| c.content_hash == file_hash)
    {
        return Ok(ExtractOutcome::Unchanged);
    }

    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Batch>(4);
    let path = file.to_path_buf();
    let parser = tokio::task::spawn_blocking(move || {
        let reader = std::io::BufReader::new(std::fs::File::open(&path).map_err(|e| {
            ConnectorError::Misconfigured(format!("the downloaded extract cannot be read: {e}"))
        })?);
        let mut rows = Vec::with_capacity(BATCH);
        let mut rejected = Vec::new();
        let sent = parse_extract(reader, |row| {
            match row {
                Row::Award { subject_key, award } => rows.push((subject_key, award)),
                Row::Rejected(r) => rejected.push(r),
            }
            if rows.len() >= BATCH {
                sender.blocking_send(Batch::Rows(std::mem::take(&mut rows)))?;
            }
            Ok::<(), tokio::sync::mpsc::error::SendError<Batch>>(())
        })?;
        if sent.is_ok() {
            // The receiver only goes away on a database error, which is reported there.
            let _ = sender.blocking_send(Batch::Rows(rows));
            let _ = sender.blocking_send(Batch::Rejected(rejected));
        }
        Ok::<_, ConnectorError>(sent.is_ok())
    });

    let write = crate::db::begin_write(db).await?;
    let txn = write.txn();
    let extract_id = uuid::Uuid::now_v7().to_string();
    let now = Utc::now();
    bulk_extract::ActiveModel {
        id: Set(extract_id.clone()),
        connector: Set(id.clone()),
        etag: Set(etag),
        content_hash: Set(file_hash),
        row_count: Set(0),
        rejected_count: Set(0),
        current: Set(false),
        loaded_at: Set(now),
    }
    .insert(txn)
    .await?;
    let mut row_count: u64 = 0;
    let mut rejected_rows: Vec<Rejected> = Vec::new();
    while let Some(batch) = receiver.recv().await {
        match batch {
            Batch::Rows(rows) if rows.is_empty() => {}
            Batch::Rows(rows) => {
                row_count += rows.len() as u64;
                let models = rows
                    .into_iter()
                    .map(|(subject_key, award)| {
                        let json = serde_json::to_string(&award)
                            .map_err(|e| ApiError::internal(e, "serialising an extract record"))?;
                        Ok(bulk_record::ActiveModel {
                            extract_id: Set(extract_id.clone()),
                            connector: Set(id.clone()),
                            subject_key: Set(subject_key),
                            upstream_id: Set(award.upstream_id.clone()),
                            content_hash: Set(content_hash(&json)),
                            record: Set(json),
                            ..Default::default()
                        })
                    })
                    .collect::<ApiResult<Vec<_>>>()?;
                bulk_record::Entity::insert_many(models).exec(txn).await?;
            }
            Batch::Rejected(rejected) => rejected_rows = rejected,
        }
    }
    let parsed = parser
        .await
        .map_err(|e| ApiError::internal(e, "the extract parser stopped"))?;
    match parsed {
        Err(ConnectorError::ExtractRefused(reason)) => {
            write.rollback().await?;
            tracing::warn!(stream = %id, %reason, "extract refused; the previous one stays in use");
            return Ok(ExtractOutcome::Refused(reason));
        }
        Err(other) => return Err(ApiError::internal(other, "reading the extract")),
        Ok(false) => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "the extract load stopped part-way"
            )));
        }
        Ok(true) => {}
    }
    // On PostgreSQL two loads of one connector's extract can overlap (the server's refresher
    // and a `tributary sync`, each its own process). Each swap deletes the extracts it can
    // see, and a DELETE sees what was committed when it began: had the other load committed
    // meanwhile, its extract would survive this one's swap and both would stay current, with
    // both files' rows kept, and which one a view serves (the older file's, it may be) left to
    // chance until a later load. So the swaps take turns (see [`EXTRACT_SWAP_LOCK`]), and each
    // statement below sees the other load's extract, committed, and replaces it.
    // On SQLite the write lock already makes whole writing transactions take turns.
    if txn.get_database_backend() == DatabaseBackend::Postgres {
        txn.execute_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            EXTRACT_SWAP_LOCK,
            [id.clone().into()],
        ))
        .await?;
    }
    // Swap: the old extract goes (its records with it), the new one becomes current.
    let old_extracts: Vec<String> = bulk_extract::Entity::find()
        .filter(bulk_extract::Column::Connector.eq(&id))
        .filter(bulk_extract::Column::Id.ne(&extract_id))
        .all(txn)
        .await?
        .into_iter()
        .map(|e| e.id)
        .collect();
    if !old_extracts.is_empty() {
        bulk_record::Entity::delete_many()
            .filter(bulk_record::Column::ExtractId.is_in(old_extracts))
            .exec(txn)
            .await?;
    }
    bulk_extract::Entity::delete_many()
        .filter(bulk_extract::Column::Connector.eq(&id))
        .filter(bulk_extract::Column::Id.ne(&extract_id))
        .exec(txn)
        .await?;
    let rejected = rejected_rows.len() as u64;
    replace_rejected(txn, &id, None, &rejected_rows, now).await?;
    bulk_extract::ActiveModel {
        id: Set(extract_id),
        row_count: Set(i64::try_from(row_count).unwrap_or(i64::MAX)),
        rejected_count: Set(i64::try_from(rejected).unwrap_or(i64::MAX)),
        current: Set(true),
        ..Default::default()
    }
    .update(txn)
    .await?;
    write.commit().await?;
    drop(file);
    crate::db::refresh_statistics(db, &["bulk_extracts", "bulk_records", "rejected_records"]).await;
    tracing::info!(stream = %id, rows = row_count, rejected, "extract loaded");
    Ok(ExtractOutcome::Loaded {
        rows: row_count,
        rejected,
    })
}
