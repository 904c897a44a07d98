//! A view's snapshots stored on PostgreSQL in one statement.
//!
//! Through the pool, keeping a view's answers is a transaction of four round trips: BEGIN,
//! read the stored versions, write, COMMIT. The benchmark's uncached view (three partners 50
//! ms away) spent 1.6 ms of its p50 there, most of the hub's time above the slowest partner.
//! Here the same decisions are one statement, in one round trip and one commit: it reads what
//! is stored, writes each answer unless the stored snapshot is newer by the partner's version
//! (decided in the statement, on the row as it stands when written, so a lagging answer never
//! replaces a newer one written meanwhile), replaces the rejected records of each snapshot
//! that changed, and answers what was stored before and what it wrote.
//!
//! It takes a view's batch, where each (connector, subject) comes once; a batch naming one
//! twice (a sync's) goes through the transaction (`sources::store_snapshots`), which writes
//! it once, as the later answer.
//!
//! The statement is safe to ask twice with the same values, so a connection lost before its
//! answer came is simply asked again (`pg_reads`): if the first run was committed, the second
//! finds the same answer stored (same version, same hash, the same row ids) and writes the
//! same again, leaving the rejected records as the first left them; served, it is the same
//! view either way.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde::Serialize;

use crate::budget::assemble::SourceMeta;
use crate::error::{ApiError, ApiResult};
use crate::services::sources::{Prepared, Stored, is_older};

/// Whether version `{a}` is older than version `{b}`, as `sources::is_older` decides it: only
/// when both are whole numbers a 64-bit integer holds, compared as numbers. The inner CASE
/// casts only what the outer one found to be digits (CASE evaluates its branches lazily).
const OLDER: &str = "(CASE WHEN {a} ~ '^[+-]?[0-9]+$' AND {b} ~ '^[+-]?[0-9]+$' THEN \
    CASE WHEN {a}::numeric BETWEEN -9223372036854775808 AND 9223372036854775807 \
          AND {b}::numeric BETWEEN -9223372036854775808 AND 9223372036854775807 \
    THEN {a}::numeric < {b}::numeric ELSE false END ELSE false END)";

/// [`OLDER`] for the SQL expressions `a` (the answer's version) and `b` (the stored one).
pub fn older(a: &str, b: &str) -> String {
    OLDER.replace("{a}", a).replace("{b}", b)
}

/// `$1`: the answers, a JSON array of [`Incoming`]; `$2`: their rejected records, a JSON array
/// of [`RejectedRow`]; `$3`: now. One row per answer, in order: what was stored before (if
/// anything) and whether the answer was written.
///
/// Each stored snapshot and rejected record is found by index, one lookup per answer
/// (`LATERAL`, kept apart by `OFFSET 0`; see `pg_bundle`). Every part of a statement reads the
/// store as it was when the statement began, so `prev` is what was stored before, and the
/// rejected records deleted are never those inserted.
static SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        r#"
WITH incoming AS (
    SELECT * FROM json_to_recordset($1::json) AS i(
        ord int, id text, connector text, subject_key text, version text,
        content_hash text, records text)
), prev AS (
    SELECT i.ord, s.version, s.content_hash, s.fetched_at FROM incoming i CROSS JOIN LATERAL (
        SELECT * FROM upstream_snapshots s
        WHERE s.connector = i.connector AND s.subject_key = i.subject_key OFFSET 0
    ) s
), written AS (
    INSERT INTO upstream_snapshots AS s
        (id, connector, subject_key, version, content_hash, records, fetched_at)
    SELECT id, connector, subject_key, version, content_hash, records, $3 FROM incoming
    ON CONFLICT (connector, subject_key) DO UPDATE SET
        version = excluded.version, content_hash = excluded.content_hash,
        records = excluded.records, fetched_at = excluded.fetched_at
    WHERE NOT {older}
    RETURNING s.connector, s.subject_key
), changed AS (
    SELECT i.ord, i.connector, i.subject_key FROM incoming i
    JOIN written w ON w.connector = i.connector AND w.subject_key = i.subject_key
    LEFT JOIN prev p ON p.ord = i.ord
    WHERE p.content_hash IS DISTINCT FROM i.content_hash
), dropped AS (
    DELETE FROM rejected_records r WHERE r.id IN (
        SELECT x.id FROM changed c CROSS JOIN LATERAL (
            SELECT x.id FROM rejected_records x
            WHERE x.connector = c.connector AND x.subject_key = c.subject_key OFFSET 0
        ) x
    )
), added AS (
    INSERT INTO rejected_records
        (id, connector, subject_key, upstream_id, line_number, reason, raw, fetched_at)
    SELECT j.id, j.connector, j.subject_key, j.upstream_id, j.line_number, j.reason, j.raw, $3
    FROM json_to_recordset($2::json) AS j(
        ord int, id text, connector text, subject_key text, upstream_id text,
        line_number bigint, reason text, raw text)
    JOIN changed c ON c.ord = j.ord
)
SELECT i.ord, p.version, p.content_hash, p.fetched_at,
    (w.connector IS NOT NULL) AS written
FROM incoming i
LEFT JOIN prev p ON p.ord = i.ord
LEFT JOIN written w ON w.connector = i.connector AND w.subject_key = i.subject_key
ORDER BY i.ord
"#,
        older = older("excluded.version", "s.version")
    )
});

/// One answer, as the statement reads it.
#[derive(Serialize)]
struct Incoming<'a> {
    ord: usize,
    id: String,
    connector: &'a str,
    subject_key: &'a str,
    version: Option<&'a str>,
    content_hash: &'a str,
    records: &'a str,
}

/// One rejected record of the answer `ord`.
#[derive(Serialize)]
struct RejectedRow<'a> {
    ord: usize,
    id: String,
    connector: &'a str,
    subject_key: Option<&'a str>,
    upstream_id: Option<&'a str>,
    line_number: Option<i64>,
    reason: &'a str,
    raw: &'a str,
}

/// Whether [`store`] takes `prepared`: each (connector, subject) at most once.
pub(crate) fn takes(prepared: &[Prepared<'_>]) -> bool {
    let mut keys: Vec<(&str, &str)> = prepared
        .iter()
        .map(|p| (p.connector, p.records.subject_key.as_str()))
        .collect();
    keys.sort_unstable();
    keys.windows(2).all(|w| w[0] != w[1])
}

fn encode(e: serde_json::Error) -> ApiError {
    ApiError::internal(e, "encoding snapshots to store")
}

/// Stores `prepared` (see [`takes`]) in one statement; answers what each stream serves, as
/// `sources::store_snapshots` does.
pub(crate) async fn store(
    db: &impl ConnectionTrait,
    prepared: &[Prepared<'_>],
    now: DateTime<Utc>,
) -> ApiResult<crate::services::sources::Kept> {
    let incoming: Vec<Incoming<'_>> = prepared
        .iter()
        .enumerate()
        .map(|(ord, p)| Incoming {
            ord,
            id: uuid::Uuid::now_v7().to_string(),
            connector: p.connector,
            subject_key: &p.records.subject_key,
            version: p.records.version.as_deref(),
            content_hash: &p.hash,
            records: &p.json,
        })
        .collect();
    let rejected: Vec<RejectedRow<'_>> = prepared
        .iter()
        .enumerate()
        .flat_map(|(ord, p)| {
            p.records.rejected.iter().map(move |r| RejectedRow {
                ord,
                id: uuid::Uuid::now_v7().to_string(),
                connector: p.connector,
                subject_key: Some(
                    r.subject_key
                        .as_deref()
                        .unwrap_or(p.records.subject_key.as_str()),
                ),
                upstream_id: r.upstream_id.as_deref(),
                line_number: r.line.and_then(|l| i64::try_from(l).ok()),
                reason: &r.reason,
                raw: &r.raw,
            })
        })
        .collect();
    let statement = Statement::from_sql_and_values(
        DbBackend::Postgres,
        SQL.as_str(),
        [
            serde_json::to_string(&incoming).map_err(encode)?.into(),
            serde_json::to_string(&rejected).map_err(encode)?.into(),
            now.into(),
        ],
    );
    let rows = db.query_all_raw(statement).await?;
    if rows.len() != prepared.len() {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "storing {} snapshots answered {} rows",
            prepared.len(),
            rows.len()
        )));
    }
    let mut out = Vec::with_capacity(prepared.len());
    for (p, row) in prepared.iter().zip(rows) {
        let version: Option<String> = row.try_get("", "version")?;
        let hash: Option<String> = row.try_get("", "content_hash")?;
        let at: Option<DateTime<Utc>> = row.try_get("", "fetched_at")?;
        let written: bool = row.try_get("", "written")?;
        let previous = hash.zip(at).map(|(hash, at)| (version, hash, at));
        out.push(match previous {
            Some((version, hash, at)) if !written => {
                if !is_older(p.records.version.as_deref(), version.as_deref()) {
                    // Kept out by a newer snapshot written since the statement began: serve
                    // that one's marks.
                    current(db, p).await?
                } else {
                    tracing::info!(stream = %p.connector, "an answer older than the stored snapshot was kept out");
                    (
                        SourceMeta {
                            connector: p.connector.to_owned(),
                            version,
                            fetched_at: at,
                            content_hash: hash,
                        },
                        Stored::Unchanged,
                    )
                }
            }
            None if !written => current(db, p).await?,
            previous => (
                SourceMeta {
                    connector: p.connector.to_owned(),
                    version: p.records.version.clone(),
                    fetched_at: now,
                    content_hash: p.hash.clone(),
                },
                match previous {
                    Some((_, hash, _)) if hash == p.hash => Stored::Unchanged,
                    _ => Stored::Changed,
                },
            ),
        });
    }
    Ok(out)
}

/// The marks of the snapshot stored now for `p`'s subject, which a newer snapshot written
/// while the statement ran kept `p` out of; with none (the subject's snapshots were erased
/// meanwhile), the answer's own, unstored.
async fn current(db: &impl ConnectionTrait, p: &Prepared<'_>) -> ApiResult<(SourceMeta, Stored)> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT version, content_hash, fetched_at FROM upstream_snapshots \
             WHERE connector = $1 AND subject_key = $2",
            [p.connector.into(), p.records.subject_key.as_str().into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => (
            SourceMeta {
                connector: p.connector.to_owned(),
                version: row.try_get("", "version")?,
                fetched_at: row.try_get("", "fetched_at")?,
                content_hash: row.try_get("", "content_hash")?,
            },
            Stored::Unchanged,
        ),
        None => (
            SourceMeta {
                connector: p.connector.to_owned(),
                version: p.records.version.clone(),
                fetched_at: Utc::now(),
                content_hash: p.hash.clone(),
            },
            Stored::Unchanged,
        ),
    })
}
