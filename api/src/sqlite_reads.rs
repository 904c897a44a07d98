//! Reads of the embedded SQLite store on the calling thread.
//!
//! sqlx runs each SQLite connection on a thread of its own: every statement is a command sent
//! to that thread and rows sent back, two cross-thread wake-ups a statement. A combined budget
//! takes about eight indexed reads that each cost SQLite a few microseconds, and the benchmark's
//! profile showed the hand-offs, not SQLite, were half the hub's CPU. The served path's reads
//! (a person, found by id or by an identifier, their snapshots, the current extract's rows,
//! rejected records, plan items) therefore go through here instead: a small pool of `rusqlite`
//! connections, each used inline by whichever task needs it, so a read is a function call.
//! Writes stay on sea-orm, in transactions, except a live view's snapshots, which go through
//! the one inline writer kept here (see `sqlite_writes`).
//!
//! Each connection is `query_only`, so nothing here can write. No memory map: a mapped file's
//! pages count in the server's resident memory, and a caseload's store is larger than its budget. In WAL mode a reader never waits
//! for the writer; the busy timeout covers only the rare moment SQLite rebuilds its WAL index.
//! A file-backed SQLite store is required: an in-memory database is private to its connection,
//! so [`SqliteReads::open`] declines it and the sea-orm path serves those reads.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use entities::{
    bulk_extract, bulk_record, funding_share, person, person_identifier, plan_item,
    rejected_record, upstream_snapshot,
};
use rusqlite::{Connection, OpenFlags, Row, params_from_iter};

use crate::error::{ApiError, ApiResult};
use crate::sqlite_writes::SqliteWriter;

/// The most idle connections kept; more are opened when more tasks read at once.
const MAX_IDLE: usize = 8;

/// Prepared statements kept per connection (one per distinct query text; an `IN` list of a
/// different length is a different text).
pub(crate) const STATEMENT_CACHE: usize = 64;

/// Inline readers over one SQLite file.
#[derive(Debug)]
pub struct SqliteReads {
    path: PathBuf,
    idle: std::sync::Mutex<Vec<Reader>>,
    /// How long a reader keeps a view (see [`data_changed`]).
    view_age: Duration,
    /// What tells the readers of a change: the process's [`data_changed`].
    changes: Arc<AtomicU64>,
    /// Bumped by [`SqliteReads::release_views`]: a view begun before it is let go at once.
    releases: AtomicU64,
    /// Reads under way, counted by the parity of the release they began under.
    in_flight: [AtomicUsize; 2],
    queries: Arc<AtomicU64>,
    /// The process's one inline writer (see `sqlite_writes`).
    writer: SqliteWriter,
}

/// How long a reader keeps one read transaction (one view of the store) across reads, when
/// nothing it reads has changed in this process; see [`data_changed`].
const VIEW_AGE: Duration = Duration::from_millis(20);

/// Bumped after every commit in this process that may change what these readers read: all
/// but the audit log's groups of read events.
static DATA_GENERATION: std::sync::LazyLock<Arc<AtomicU64>> =
    std::sync::LazyLock::new(Default::default);

/// How many times [`data_changed`] has been called in this process.
pub fn data_generation() -> u64 {
    DATA_GENERATION.load(Ordering::Acquire)
}

/// Tells the readers that a commit in this process changed what they read, so no read that
/// begins after this call sees the store as it was before it.
///
/// Why readers keep a view at all: in WAL mode SQLite empties a connection's whole page cache
/// whenever it begins a read transaction after any commit, and the audit log commits a group
/// of read events every millisecond or two under load. A view kept for up to [`VIEW_AGE`]
/// reads the pages it already holds, and skips the locking of a read transaction per
/// statement. The audit log's commits need not be seen here (these readers never read it);
/// every other commit in this process is, at once (`db::WriteTxn::commit`, the snapshot
/// writer, and any other statement the server's pool runs); another process's commits (a
/// `tributary sync`) are seen within [`VIEW_AGE`].
pub fn data_changed() {
    DATA_GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// How long [`SqliteReads::release_views`] waits at most for the reads under way.
const RELEASE_WAIT: Duration = Duration::from_millis(2);

fn parity(release: u64) -> usize {
    usize::from(release % 2 == 1)
}

/// One read under way, counted until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A pooled read connection and the view it holds open, if any.
#[derive(Debug)]
struct Reader {
    connection: Connection,
    view: Option<View>,
}

/// An open read transaction: the data generation and the release it began after, and when.
#[derive(Debug, Clone, Copy)]
struct View {
    generation: u64,
    release: u64,
    began: std::time::Instant,
}

impl Reader {
    /// Makes sure the connection reads a view no older than `age` that has seen every
    /// change this process committed and began after the last release.
    fn current(
        &mut self,
        age: Duration,
        changes: &AtomicU64,
        release: u64,
    ) -> rusqlite::Result<()> {
        let generation = changes.load(Ordering::Acquire);
        if let Some(view) = self.view
            && view.generation == generation
            && view.release == release
            && view.began.elapsed() < age
        {
            return Ok(());
        }
        self.end()?;
        // The view is taken at the first read after BEGIN, so after `generation` was read.
        self.connection.prepare_cached("BEGIN")?.execute([])?;
        self.view = Some(View {
            generation,
            release,
            began: std::time::Instant::now(),
        });
        Ok(())
    }

    /// Ends the view held, if any.
    fn end(&mut self) -> rusqlite::Result<()> {
        self.view = None;
        if !self.connection.is_autocommit() {
            self.connection.prepare_cached("COMMIT")?.execute([])?;
        }
        Ok(())
    }
}

fn failed(e: rusqlite::Error) -> ApiError {
    ApiError::internal(e, "reading the SQLite store")
}

/// `?, ?, ?` for `n` values.
fn marks(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

/// A stored instant: sqlx writes `DateTime<Utc>` to SQLite as RFC 3339 text.
fn instant(row: &Row<'_>, index: usize) -> rusqlite::Result<DateTime<Utc>> {
    let text: String = row.get(index)?;
    DateTime::parse_from_rfc3339(&text)
        .or_else(|_| DateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f%:z"))
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, e.into())
        })
}

/// What a snapshot writer compares an answer with: the stored snapshot of each of `pairs`
/// (connector, subject key) that has one, as (connector, subject key, version, content hash,
/// fetched at), without its records. Read on `connection`, a writer's inside its transaction.
pub fn stored_versions(
    connection: &Connection,
    pairs: &[(&str, &str)],
) -> rusqlite::Result<Vec<crate::services::sources::StoredVersion>> {
    snapshots_of(
        connection,
        "connector, subject_key, version, content_hash, fetched_at",
        pairs,
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, instant(r, 4)?)),
    )
}

/// `columns` of the snapshots of `pairs` (connector, subject key), each row mapped, in the
/// pairs' order.
///
/// One lookup of the (connector, subject key) index a pair, by one cached statement. Asked as
/// `connector IN (..) AND subject_key IN (..)`, a view's three pairs were nine lookups (every
/// connector with every subject key), six of them for keys no connector holds: about 24 page
/// visits and 148 virtual-machine steps a view in the benchmark's store, against 14 and 49 so.
fn snapshots_of<T>(
    connection: &Connection,
    columns: &str,
    pairs: &[(&str, &str)],
    mut map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let sql = format!(
        "SELECT {columns} FROM upstream_snapshots WHERE connector = ?1 AND subject_key = ?2"
    );
    let mut statement = connection.prepare_cached(&sql)?;
    let mut out = Vec::with_capacity(pairs.len());
    for &(connector, subject_key) in pairs {
        let mut rows = statement.query([connector, subject_key])?;
        while let Some(row) = rows.next()? {
            out.push(map(row)?);
        }
    }
    Ok(out)
}

/// A stored date (`YYYY-MM-DD`).
fn date(row: &Row<'_>, index: usize) -> rusqlite::Result<NaiveDate> {
    let text: String = row.get(index)?;
    NaiveDate::parse_from_str(&text, "%Y-%m-%d").map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, e.into())
    })
}

fn optional_date(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<NaiveDate>> {
    match row.get_ref(index)? {
        rusqlite::types::ValueRef::Null => Ok(None),
        _ => date(row, index).map(Some),
    }
}

impl SqliteReads {
    /// Inline readers for the store at `url`, or `None` when it is not a writable SQLite
    /// file: a PostgreSQL URL, an in-memory database no other connection can see, another VFS,
    /// or a store opened read-only or immutable (the audit writer must not write to those).
    pub fn open(url: &str, queries: Arc<AtomicU64>) -> Option<Self> {
        let path = Self::file(url)?;
        let writer = SqliteWriter::new(path.clone(), Some(queries.clone()));
        Some(Self {
            path,
            idle: std::sync::Mutex::new(Vec::new()),
            view_age: VIEW_AGE,
            changes: DATA_GENERATION.clone(),
            releases: AtomicU64::new(0),
            in_flight: Default::default(),
            queries,
            writer,
        })
    }

    /// The same readers keeping each view for `age` instead of [`VIEW_AGE`], and told of
    /// changes by `changes` instead of [`data_changed`] (for tests, which share the process
    /// with other tests' writes).
    pub fn with_views(mut self, age: Duration, changes: Arc<AtomicU64>) -> Self {
        self.view_age = age;
        self.changes = changes;
        self
    }

    /// The inline writer over the same file: the audit log's groups and the views'
    /// snapshots.
    pub fn writer(&self) -> &SqliteWriter {
        &self.writer
    }

    /// Whether [`SqliteReads::open`] takes `url`: then the server's audit writer, and its
    /// background checkpointer, run on that file too.
    pub fn accepts(url: &str) -> bool {
        Self::file(url).is_some()
    }

    fn file(url: &str) -> Option<PathBuf> {
        let declined = [":memory:", "mode=memory", "mode=ro", "vfs=", "immutable="];
        if !url.starts_with("sqlite:") || declined.iter().any(|d| url.contains(d)) {
            return None;
        }
        let options = sea_orm::sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
        let path = options.get_filename().to_path_buf();
        let name = path.to_string_lossy();
        if name.is_empty() {
            return None;
        }
        Some(path)
    }

    /// The store's file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn connect(&self) -> rusqlite::Result<Connection> {
        let connection = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )?;
        connection.busy_timeout(Duration::from_secs(5))?;
        connection.pragma_update(None, "query_only", true)?;
        connection.pragma_update(None, "cache_size", -8192)?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(connection)
    }

    /// Runs `read` on an idle connection (opening one if none is idle), in a current view
    /// (see [`data_changed`]), then returns it. A connection whose read failed is closed.
    fn with<T>(&self, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> ApiResult<T> {
        // Counted under the release it began under, so `release_views` can wait for it.
        let release = loop {
            let release = self.releases.load(Ordering::SeqCst);
            self.in_flight[parity(release)].fetch_add(1, Ordering::SeqCst);
            if self.releases.load(Ordering::SeqCst) == release {
                break release;
            }
            self.in_flight[parity(release)].fetch_sub(1, Ordering::SeqCst);
        };
        let _done = InFlight(&self.in_flight[parity(release)]);
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let mut reader = match idle {
            Some(r) => r,
            None => Reader {
                connection: self.connect().map_err(failed)?,
                view: None,
            },
        };
        let out = reader
            .current(self.view_age, &self.changes, release)
            .and_then(|()| read(&reader.connection))
            .map_err(failed)?;
        // Views were let go while this one was read: it goes too (see `release_views`).
        if self.releases.load(Ordering::SeqCst) != release {
            reader.end().map_err(failed)?;
        }
        let mut pool = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pool.len() < MAX_IDLE {
            pool.push(reader);
        }
        Ok(out)
    }

    /// Ends the views idle readers have held past their age, so an idle server never keeps
    /// an old view (which would stop checkpoints copying the log back past it). A reader that
    /// cannot end its view is closed.
    pub fn end_old_views(&self) {
        let mut pool = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pool.retain_mut(|reader| match reader.view {
            Some(view) if view.began.elapsed() >= self.view_age => reader.end().is_ok(),
            _ => true,
        });
    }

    /// Lets every view go: idle readers end theirs now, a reader in use ends its view when
    /// its read is done, and every read after this call begins a new view. A reader that
    /// cannot end its view is closed.
    ///
    /// Then it waits, up to [`RELEASE_WAIT`], for the reads under way to finish (each takes
    /// microseconds), so that on return no view begun before the call is open. Nothing's
    /// correctness rests on that wait: a view still open only keeps the log from starting
    /// over this time.
    pub fn release_views(&self) {
        let before = self.releases.fetch_add(1, Ordering::SeqCst);
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain_mut(|reader| reader.end().is_ok());
        let deadline = std::time::Instant::now() + RELEASE_WAIT;
        while self.in_flight[parity(before)].load(Ordering::SeqCst) > 0
            && std::time::Instant::now() < deadline
        {
            std::thread::yield_now();
        }
    }

    /// Copies what is left of the write-ahead log back into the file, on the inline
    /// writer's connection, so the writer's next transaction starts the log over from its
    /// beginning; returns whether the whole log was copied back.
    ///
    /// Why: SQLite starts its log over only when a writer begins with the whole log copied
    /// back and no reader reading any of it. Under a steady load neither holds by itself: the
    /// audit log commits a group every millisecond or two, and these readers keep views for
    /// up to [`VIEW_AGE`], each holding back the copy past the point where it began. The log
    /// then grew by about 50 MB a second in the benchmark's closed loop (every frame written
    /// past its end costs the kernel a fresh page, zeroed), and it would grow for as long as
    /// the load lasted. Run after a background checkpoint has copied most of the log, this
    /// copies the few groups committed since, with every view let go first (so none holds
    /// the copy back) and again after (so no view begun during the copy holds a reader's slot
    /// in the log).
    pub async fn catch_up_log(&self) -> rusqlite::Result<bool> {
        self.release_views();
        let whole = self.writer.checkpoint().await?;
        if whole {
            self.release_views();
        }
        Ok(whole)
    }

    /// Runs one query and maps every row.
    fn rows<T>(
        &self,
        sql: &str,
        values: &[&str],
        map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> ApiResult<Vec<T>> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.with(|c| {
            let mut statement = c.prepare_cached(sql)?;
            statement
                .query_map(params_from_iter(values.iter()), map)?
                .collect()
        })
    }

    /// The snapshots of `pairs` (connector, subject key).
    pub fn snapshots(&self, pairs: &[(&str, &str)]) -> ApiResult<Vec<upstream_snapshot::Model>> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.with(|c| {
            snapshots_of(
                c,
                "id, connector, subject_key, version, content_hash, records, fetched_at",
                pairs,
                |r| {
                    Ok(upstream_snapshot::Model {
                        id: r.get(0)?,
                        connector: r.get(1)?,
                        subject_key: r.get(2)?,
                        version: r.get(3)?,
                        content_hash: r.get(4)?,
                        records: r.get(5)?,
                        fetched_at: instant(r, 6)?,
                    })
                },
            )
        })
    }

    /// The current extract of each of `connectors` that has one.
    pub fn current_extracts(&self, connectors: &[&str]) -> ApiResult<Vec<bulk_extract::Model>> {
        if connectors.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT id, connector, etag, content_hash, row_count, rejected_count, current, \
             loaded_at FROM bulk_extracts WHERE connector IN ({}) AND current = 1",
            marks(connectors.len())
        );
        self.rows(&sql, connectors, |r| {
            Ok(bulk_extract::Model {
                id: r.get(0)?,
                connector: r.get(1)?,
                etag: r.get(2)?,
                content_hash: r.get(3)?,
                row_count: r.get(4)?,
                rejected_count: r.get(5)?,
                current: r.get(6)?,
                loaded_at: instant(r, 7)?,
            })
        })
    }

    /// The rows of one extract for any of `subjects`.
    pub fn bulk_rows(
        &self,
        extract_id: &str,
        subjects: &[&str],
    ) -> ApiResult<Vec<bulk_record::Model>> {
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT id, extract_id, connector, subject_key, upstream_id, record, content_hash \
             FROM bulk_records WHERE extract_id = ? AND subject_key IN ({}) ORDER BY id",
            marks(subjects.len())
        );
        let values: Vec<&str> = std::iter::once(extract_id)
            .chain(subjects.iter().copied())
            .collect();
        self.rows(&sql, &values, |r| {
            Ok(bulk_record::Model {
                id: r.get(0)?,
                extract_id: r.get(1)?,
                connector: r.get(2)?,
                subject_key: r.get(3)?,
                upstream_id: r.get(4)?,
                record: r.get(5)?,
                content_hash: r.get(6)?,
            })
        })
    }

    /// Rejected records of one connector for any of `subjects`.
    pub fn rejected(
        &self,
        connector: &str,
        subjects: &[&str],
    ) -> ApiResult<Vec<rejected_record::Model>> {
        if subjects.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT id, connector, subject_key, upstream_id, line_number, reason, raw, \
             fetched_at FROM rejected_records WHERE connector = ? AND subject_key IN ({}) \
             ORDER BY id",
            marks(subjects.len())
        );
        let values: Vec<&str> = std::iter::once(connector)
            .chain(subjects.iter().copied())
            .collect();
        self.rows(&sql, &values, |r| {
            Ok(rejected_record::Model {
                id: r.get(0)?,
                connector: r.get(1)?,
                subject_key: r.get(2)?,
                upstream_id: r.get(3)?,
                line_number: r.get(4)?,
                reason: r.get(5)?,
                raw: r.get(6)?,
                fetched_at: instant(r, 7)?,
            })
        })
    }

    /// The plan items of any of `person_ids` (in id order) and their shares (in position
    /// order).
    pub fn plan_items(
        &self,
        person_ids: &[&str],
    ) -> ApiResult<(Vec<plan_item::Model>, Vec<funding_share::Model>)> {
        if person_ids.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let sql = format!(
            "SELECT id, person_id, description, purpose, cost_pence, frequency, start_date, \
             end_date, version, idempotency_key, created_by, created_at, updated_at \
             FROM plan_items WHERE person_id IN ({}) ORDER BY id",
            marks(person_ids.len())
        );
        let items = self.rows(&sql, person_ids, |r| {
            Ok(plan_item::Model {
                id: r.get(0)?,
                person_id: r.get(1)?,
                description: r.get(2)?,
                purpose: r.get(3)?,
                cost_pence: r.get(4)?,
                frequency: r.get(5)?,
                start_date: date(r, 6)?,
                end_date: optional_date(r, 7)?,
                version: r.get(8)?,
                idempotency_key: r.get(9)?,
                created_by: r.get(10)?,
                created_at: instant(r, 11)?,
                updated_at: instant(r, 12)?,
            })
        })?;
        if items.is_empty() {
            return Ok((items, Vec::new()));
        }
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        let sql = format!(
            "SELECT id, plan_item_id, position, stream_id, percent_hundredths, amount_pence, \
             award_id FROM funding_shares WHERE plan_item_id IN ({}) ORDER BY position",
            marks(ids.len())
        );
        let shares = self.rows(&sql, &ids, |r| {
            Ok(funding_share::Model {
                id: r.get(0)?,
                plan_item_id: r.get(1)?,
                position: r.get(2)?,
                stream_id: r.get(3)?,
                percent_hundredths: r.get(4)?,
                amount_pence: r.get(5)?,
                award_id: r.get(6)?,
            })
        })?;
        Ok((items, shares))
    }

    /// A person's registry row and identifiers.
    pub fn person(
        &self,
        id: &str,
    ) -> ApiResult<Option<(person::Model, Vec<person_identifier::Model>)>> {
        // One statement (one read transaction), the person's row repeated beside each of
        // their identifiers, or once with none.
        let rows = self.rows(
            "SELECT p.id, p.given_name, p.family_name, p.date_of_birth, p.version, \
             p.created_by, p.created_at, p.updated_at, \
             i.id, i.person_id, i.scheme, i.value, i.linked_by, i.linked_at \
             FROM persons p LEFT JOIN person_identifiers i ON i.person_id = p.id \
             WHERE p.id = ?",
            &[id],
            |r| {
                let person = person::Model {
                    id: r.get(0)?,
                    given_name: r.get(1)?,
                    family_name: r.get(2)?,
                    date_of_birth: date(r, 3)?,
                    version: r.get(4)?,
                    created_by: r.get(5)?,
                    created_at: instant(r, 6)?,
                    updated_at: instant(r, 7)?,
                };
                let identifier = match r.get::<_, Option<String>>(8)? {
                    None => None,
                    Some(id) => Some(person_identifier::Model {
                        id,
                        person_id: r.get(9)?,
                        scheme: r.get(10)?,
                        value: r.get(11)?,
                        linked_by: r.get(12)?,
                        linked_at: instant(r, 13)?,
                    }),
                };
                Ok((person, identifier))
            },
        )?;
        let mut rows = rows.into_iter();
        let Some((person, first)) = rows.next() else {
            return Ok(None);
        };
        let identifiers = first
            .into_iter()
            .chain(rows.filter_map(|(_, identifier)| identifier))
            .collect();
        Ok(Some((person, identifiers)))
    }

    /// The id of the person holding the identifier `scheme`:`value` (as stored: normalised),
    /// if anyone does.
    pub fn person_id_by_identifier(&self, scheme: &str, value: &str) -> ApiResult<Option<String>> {
        Ok(self
            .rows(
                "SELECT person_id FROM person_identifiers WHERE scheme = ? AND value = ? LIMIT 1",
                &[scheme, value],
                |r| r.get(0),
            )?
            .pop())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundled SQLite is built as `.cargo/config.toml` says: each connection's page cache
    /// its own, with no process-wide mutex in front of it or around every allocation.
    #[test]
    fn sqlite_is_built_without_shared_page_caches_or_memory_statistics() {
        let c = Connection::open_in_memory().unwrap();
        let used = |option: &str| -> bool {
            c.query_row("SELECT sqlite_compileoption_used(?1)", [option], |r| {
                r.get(0)
            })
            .unwrap()
        };
        assert!(used("THREADSAFE=1"), "the options are read");
        assert!(!used("ENABLE_MEMORY_MANAGEMENT"));
        assert!(used("DEFAULT_MEMSTATUS=0"));
    }

    #[test]
    fn only_a_sqlite_file_is_read_inline() {
        let counter = Arc::new(AtomicU64::new(0));
        assert!(SqliteReads::open("postgres://postgres@127.0.0.1/test", counter.clone()).is_none());
        assert!(SqliteReads::open("sqlite::memory:", counter.clone()).is_none());
        assert!(SqliteReads::open("sqlite://x.db?mode=memory", counter.clone()).is_none());
        assert!(SqliteReads::open("sqlite://x.db?mode=ro", counter.clone()).is_none());
        assert!(SqliteReads::open("sqlite://x.db?immutable=true", counter.clone()).is_none());
        assert!(SqliteReads::open("sqlite://x.db?vfs=memdb", counter.clone()).is_none());
        let reads = SqliteReads::open("sqlite:///tmp/store.db?mode=rwc", counter).unwrap();
        assert_eq!(reads.path, PathBuf::from("/tmp/store.db"));
    }

    /// Frames in the log and frames copied back, as a passive checkpoint by another
    /// connection (a background checkpointer) reports them after copying what it may.
    fn background_checkpoint(path: &std::path::Path) -> (i64, i64) {
        Connection::open(path)
            .unwrap()
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
            .unwrap()
    }

    /// A reader holding a view (as the served path's readers do between reads) stops the log
    /// from starting over, so under a steady load it grows without end. Caught up, the
    /// writer's next transaction starts the log over, and the readers read on.
    #[tokio::test]
    async fn caught_up_the_log_starts_over_under_a_view() {
        let (_dir, path) = crate::sqlite_writes::test_store("CREATE TABLE t (x TEXT)");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let reads = SqliteReads::open(&url, Arc::new(AtomicU64::new(0)))
            .unwrap()
            .with_views(Duration::from_secs(600), Arc::new(AtomicU64::new(0)));
        let insert = async |n: usize| {
            for _ in 0..n {
                reads
                    .writer()
                    .transaction(Duration::from_secs(5), |w| {
                        w.connection()
                            .execute("INSERT INTO t VALUES (?1)", ["x".repeat(500)])
                    })
                    .await
                    .unwrap();
            }
        };
        let count = || {
            reads
                .with(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)))
                .unwrap()
        };
        insert(20).await;
        assert_eq!(count(), 20);
        // The reader keeps its view, begun at frame 20 or so; more groups go in after it.
        insert(20).await;
        let (log, copied) = background_checkpoint(&path);
        assert!(
            log >= 40 && copied < log,
            "the view held the copy back: {copied} of {log}"
        );
        insert(1).await;
        let (log, _) = background_checkpoint(&path);
        assert!(
            log > 40,
            "the log went on growing behind the view: {log} frames"
        );

        assert!(
            reads.catch_up_log().await.unwrap(),
            "the whole log was copied back"
        );
        insert(1).await;
        let (log, copied) = background_checkpoint(&path);
        assert!(log <= 3, "the writer started the log over: {log} frames");
        assert_eq!(copied, log);
        assert_eq!(count(), 42, "the reader reads the rows the log held");
    }

    #[test]
    fn placeholders_match_the_values() {
        assert_eq!(marks(1), "?");
        assert_eq!(marks(3), "?, ?, ?");
    }
}
