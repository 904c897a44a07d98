//! Small, frequent writes to the embedded SQLite store, inline, on a connection of the
//! writer's own.
//!
//! Through sqlx every statement of a transaction (begin, each read and write, commit) is a
//! command sent to the connection's own thread and an answer sent back: two cross-thread
//! wake-ups a statement. For the writes a server makes all the time (the audit log's group
//! commit, a live view's snapshots) those hand-offs cost more than SQLite's work, so they run
//! here instead, as a function call on the calling thread, in one immediate transaction.
//!
//! A writer takes this process's SQLite write turn first, like every writer (see
//! `db::begin_write`), so it never waits on SQLite's lock for a writer of this process.
//! It runs statements sea-orm builds for SQLite ([`execute`]), with values bound as sqlx binds
//! them, so what it stores is exactly what sea-orm would store. Its connection checkpoints only
//! when told to ([`SqliteWriter::checkpoint`]): the audit writer's background checkpointer
//! copies the log back, and the writer copies back the little that leaves.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OpenFlags, params_from_iter};

/// An inline writer over one SQLite file.
#[derive(Debug)]
pub struct SqliteWriter {
    path: PathBuf,
    connection: Mutex<Option<Connection>>,
    queries: Option<Arc<AtomicU64>>,
    /// Connections opened so far.
    opened: AtomicU64,
}

impl SqliteWriter {
    /// A writer for the file at `path`; its statements count in `queries`. One writer serves
    /// every inline write of a process (the audit log's groups and the views' snapshots): its
    /// page cache then stays warm from one transaction to the next, where two connections
    /// writing in turn would each find their cache emptied by the other's commit.
    pub fn new(path: PathBuf, queries: Option<Arc<AtomicU64>>) -> Self {
        Self {
            path,
            connection: Mutex::new(None),
            queries,
            opened: AtomicU64::new(0),
        }
    }

    /// How many connections this writer has opened: one, unless a transaction failed and
    /// left its connection unusable.
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `write` in one immediate transaction, under this process's write turn, waiting
    /// at most `busy_timeout` for another process's write lock: it commits when `write`
    /// returns `Ok`, and rolls back otherwise. A connection whose transaction failed and was
    /// rolled back is kept, warm, for the next; one left inside a transaction is closed, and
    /// the next transaction opens a fresh one.
    pub async fn transaction<T>(
        &self,
        busy_timeout: Duration,
        write: impl FnOnce(&Writing<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let turn = crate::db::sqlite_write_turn().await;
        let connection = self.connection()?;
        let out = connection
            .busy_timeout(busy_timeout)
            .and_then(|()| run(&connection, self.queries.as_deref(), write));
        // A profile of the live fan-out found 1.4% of the hub's CPU in opening writer
        // connections again (schema read, page cache cold) after writes that had failed
        // cleanly, such as an inline write that found the lock taken.
        if out.is_ok() || connection.is_autocommit() {
            self.keep(connection);
        }
        // Only now, with the connection back: the next writer in turn (on another thread)
        // would otherwise find none idle and open one of its own, cold, and one of the two
        // would be closed when both were kept. A later profile of the live fan-out found 2.4%
        // of the hub's CPU in those openings (tens of them a second).
        drop(turn);
        if out.is_ok() {
            crate::db::note_sqlite_written();
        }
        out
    }

    /// The idle connection, or a new one.
    fn connection(&self) -> rusqlite::Result<Connection> {
        let idle = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match idle {
            Some(c) => Ok(c),
            None => {
                self.opened.fetch_add(1, Ordering::Relaxed);
                open(&self.path)
            }
        }
    }

    /// Keeps `connection` for the next use.
    fn keep(&self, connection: Connection) {
        *self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(connection);
    }

    /// Copies the write-ahead log back into the file on this writer's connection, under this
    /// process's write turn (so none of its writers commits meanwhile), waiting for no other
    /// connection; returns whether the whole log was copied back.
    pub async fn checkpoint(&self) -> rusqlite::Result<bool> {
        let turn = crate::db::sqlite_write_turn().await;
        let connection = self.connection()?;
        let (busy, log, copied): (i64, i64, i64) =
            connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        self.keep(connection);
        drop(turn);
        Ok(busy == 0 && log == copied)
    }
}

fn run<T>(
    connection: &Connection,
    queries: Option<&AtomicU64>,
    write: impl FnOnce(&Writing<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    // BEGIN and COMMIT as cached statements: rusqlite's `Transaction` parses both afresh each
    // time (`execute_batch`), which a profile of the live fan-out found at 1.5% of the hub's CPU.
    connection.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let written = write(&Writing {
        connection,
        queries,
    })
    .and_then(|out| {
        connection.prepare_cached("COMMIT")?.execute([])?;
        Ok(out)
    });
    if written.is_err() && !connection.is_autocommit() {
        // Should the rollback fail too, the connection is left inside its transaction, and
        // the caller closes it (which rolls back); the work's error is the one to report.
        let _ = connection.execute_batch("ROLLBACK");
    }
    written
}

/// An open immediate transaction of a [`SqliteWriter`].
#[derive(Debug)]
pub struct Writing<'a> {
    connection: &'a Connection,
    queries: Option<&'a AtomicU64>,
}

impl Writing<'_> {
    /// The transaction, for statements written out by hand.
    pub fn connection(&self) -> &Connection {
        self.connection
    }

    /// Counts one statement run (with the server's pool's count).
    pub fn counted(&self) {
        if let Some(queries) = self.queries {
            queries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs a statement sea-orm built for SQLite; returns the rows it changed.
    pub fn execute(&self, statement: &sea_orm::Statement) -> rusqlite::Result<usize> {
        self.counted();
        let values = statement
            .values
            .iter()
            .flat_map(|v| v.0.iter())
            .map(bound)
            .collect::<rusqlite::Result<Vec<Sql>>>()?;
        self.connection
            .prepare_cached(&statement.sql)?
            .execute(params_from_iter(values))
    }
}

/// An instant as sqlx writes a `DateTime<Utc>` to SQLite: RFC 3339 text.
pub(crate) fn sqlite_instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

/// A value as sqlx binds it to SQLite. Only the kinds the hub's entities store are taken.
fn bound(value: &sea_orm::Value) -> rusqlite::Result<Sql> {
    use sea_orm::Value as V;
    Ok(match value {
        V::Bool(v) => v.map_or(Sql::Null, |b| Sql::Integer(b.into())),
        V::Int(v) => v.map_or(Sql::Null, |i| Sql::Integer(i.into())),
        V::BigInt(v) => v.map_or(Sql::Null, Sql::Integer),
        V::String(v) => v.clone().map_or(Sql::Null, Sql::Text),
        V::ChronoDateTimeUtc(v) => v.map_or(Sql::Null, |t| Sql::Text(sqlite_instant(t))),
        V::ChronoDate(v) => v.map_or(Sql::Null, |d| Sql::Text(d.format("%F").to_string())),
        // The value itself is never named: it may be personal data.
        _ => {
            return Err(rusqlite::Error::ToSqlConversionFailure(
                "a kind of value the inline writer does not bind".into(),
            ));
        }
    })
}

/// Opens a writing connection to `path`. It never checkpoints (see the module's note), and
/// waits up to 15 seconds for another process's lock unless told otherwise.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    connection.busy_timeout(Duration::from_secs(15))?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.pragma_update(None, "foreign_keys", true)?;
    connection.pragma_update(None, "wal_autocheckpoint", 0)?;
    // The audit log's and the snapshots' statements together (an `IN` list or a batch of
    // rows of another length is another text) outnumber rusqlite's default of 16.
    connection.set_prepared_statement_cache_capacity(crate::sqlite_reads::STATEMENT_CACHE);
    Ok(connection)
}

/// For tests: a fresh store file in WAL mode holding `table` (its CREATE statement), in a
/// directory that lasts as long as the guard returned with it.
#[cfg(test)]
pub(crate) fn test_store(table: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch(&format!("PRAGMA journal_mode = WAL; {table};"))
        .unwrap();
    (dir, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(path: &Path) -> Vec<String> {
        let connection = Connection::open(path).unwrap();
        let mut statement = connection.prepare("SELECT x FROM t ORDER BY x").unwrap();
        statement
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// A transaction commits whole when its work succeeds and leaves nothing when it fails
    /// part-way; the writer goes on writing after a failure, and a transaction repeated on a
    /// kept connection (its BEGIN and COMMIT cached) commits each time.
    #[tokio::test]
    async fn a_transaction_commits_whole_or_leaves_nothing() {
        let (_dir, path) = test_store("CREATE TABLE t (x TEXT UNIQUE)");
        let writer = SqliteWriter::new(path.clone(), None);
        let insert = |w: &Writing<'_>, x: &str| {
            w.connection()
                .prepare_cached("INSERT INTO t VALUES (?1)")?
                .execute([x])
        };
        for x in ["a", "b"] {
            writer
                .transaction(Duration::ZERO, |w| insert(w, x))
                .await
                .unwrap();
        }
        assert_eq!(rows(&path), ["a", "b"]);

        // The first insert lands in the transaction; the second breaks the unique key.
        let failed = writer
            .transaction(Duration::ZERO, |w| {
                insert(w, "c")?;
                insert(w, "a")
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(rows(&path), ["a", "b"], "the failed transaction left a row");
        assert!(
            writer.connection.lock().unwrap().is_some(),
            "the connection rolled back cleanly, but was not kept"
        );

        writer
            .transaction(Duration::ZERO, |w| insert(w, "d"))
            .await
            .unwrap();
        assert_eq!(rows(&path), ["a", "b", "d"]);

        // On a connection of its own, a failed run ends its transaction itself.
        let connection = open(&path).unwrap();
        assert!(run(&connection, None, |w| insert(w, "b")).is_err());
        assert!(
            connection.is_autocommit(),
            "the failed run left its transaction open"
        );
        run(&connection, None, |w| insert(w, "e")).unwrap();
        assert_eq!(rows(&path), ["a", "b", "d", "e"]);
    }

    /// Writers on several threads at once share the one connection: each hands it back
    /// before the next takes its turn, so none opens another.
    #[test]
    fn writers_on_many_threads_share_one_connection() {
        let (_dir, path) = test_store("CREATE TABLE t (x TEXT)");
        let writer = Arc::new(SqliteWriter::new(path.clone(), None));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .build()
            .unwrap();
        let (threads, each) = (8, 1000);
        runtime.block_on(async {
            let tasks: Vec<_> = (0..threads)
                .map(|t| {
                    let writer = writer.clone();
                    tokio::spawn(async move {
                        for i in 0..each {
                            writer
                                .transaction(Duration::from_secs(5), |w| {
                                    w.connection()
                                        .prepare_cached("INSERT INTO t VALUES (?1)")?
                                        .execute([format!("{t}-{i}")])
                                })
                                .await
                                .unwrap();
                            if i % 50 == 0 {
                                writer.checkpoint().await.unwrap();
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
        assert_eq!(rows(&path).len(), threads * each);
        assert_eq!(
            writer.connections_opened(),
            1,
            "a writer found the connection away and opened another"
        );
    }
}
