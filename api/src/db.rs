//! The hub's store: connecting and migrating, the same way on SQLite and PostgreSQL.

use std::time::Duration;

use anyhow::Context as _;
use migrations::Migrator;
use migrations::MigratorTrait;
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, Database, DatabaseBackend, DatabaseConnection, DatabaseTransaction, DbErr,
    TransactionTrait,
};

use crate::config::DatabaseSettings;

/// Opens a pool on the configured database.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<DatabaseConnection> {
    connect_with(settings, false).await
}

/// Opens the server's pool. On a SQLite file its connections never copy the write-ahead log
/// back themselves: left to SQLite, the commit that finds more than 1,000 pages of log does
/// the copying and an fsync of the whole store inside the request that committed, while every
/// other writer waits its turn. The benchmark's live fan-out (three snapshots stored a request)
/// had a p99 20 to 70 ms above its p50 from that alone. The server's background checkpointer
/// (`audit::Checkpointer`) copies the log back instead, after any write (see
/// [`take_sqlite_written`]).
pub async fn connect_server(settings: &DatabaseSettings) -> anyhow::Result<DatabaseConnection> {
    let background = crate::sqlite_reads::SqliteReads::accepts(&settings.url);
    connect_with(settings, background).await
}

async fn connect_with(
    settings: &DatabaseSettings,
    background_checkpoints: bool,
) -> anyhow::Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(settings.url.clone());
    options
        .max_connections(settings.max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false)
        // sqlx pings a connection on every acquire by default: a second round trip per
        // statement. Only a connection idle for a while is tested before use.
        .test_before_acquire_if_idle_for(Duration::from_secs(30))
        // WAL lets readers go on while one writer commits; writers queue on the busy timeout.
        .map_sqlx_sqlite_opts(move |opts| {
            opts.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(15))
                .foreign_keys(true)
                // 8 MiB of page cache per connection (SQLite's default is 2 MiB): an extract's
                // index pages stay cached while 100,000 rows go in.
                .pragma("cache_size", "-8192")
                .pragma(
                    "wal_autocheckpoint",
                    if background_checkpoints { "0" } else { "1000" },
                )
        })
        .map_sqlx_postgres_opts(tune_postgres);
    Database::connect(options)
        .await
        .context("failed to connect to the database named by database.url")
}

/// What the pool's PostgreSQL connections set: plan each statement with its values (the
/// served path's readers do not; see `pg_reads`). A
/// generic plan cached while a table was small (a fresh database during its first sync) stays
/// a sequential scan as the table grows: the benchmark saw a sync slow to a crawl at 100,000
/// people.
pub fn tune_postgres(
    options: sea_orm::sqlx::postgres::PgConnectOptions,
) -> sea_orm::sqlx::postgres::PgConnectOptions {
    options.options([("plan_cache_mode", "force_custom_plan")])
}

/// Refreshes PostgreSQL's planner statistics for `tables` after a bulk write (an extract
/// loaded, a sync stored). The served path's readers plan a statement once per connection (see
/// `pg_reads`), and a cached plan is made again only when the statistics of its tables change:
/// without this, a plan made while a table was nearly empty could outlive the table's growth
/// until autovacuum next analyzed it. Statistics are an optimisation, so a failure is logged,
/// not returned. SQLite needs nothing here.
pub async fn refresh_statistics(db: &DatabaseConnection, tables: &[&str]) {
    if db.get_database_backend() != DatabaseBackend::Postgres || tables.is_empty() {
        return;
    }
    let sql = format!("ANALYZE {}", tables.join(", "));
    if let Err(e) = sea_orm::ConnectionTrait::execute_unprepared(db, &sql).await {
        tracing::warn!(error = %e, "refreshing the planner's statistics failed");
    }
}

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> anyhow::Result<()> {
    Migrator::up(db, None)
        .await
        .context("failed to apply the database migrations")
}

/// SQLite has one writer at a time, and a writer that finds the database locked sleeps in
/// SQLite's busy handler (1 ms, then 2, 5, 10...) before it looks again. Under load that sleep
/// is most of a write's latency. Writers in this process therefore take turns here first, in
/// order, and reach SQLite only when it is theirs; another process on the same file still
/// meets the busy handler. PostgreSQL needs no turn: its row locks queue without sleeping.
static SQLITE_WRITE_TURN: std::sync::LazyLock<std::sync::Arc<tokio::sync::Mutex<()>>> =
    std::sync::LazyLock::new(Default::default);

/// A writing transaction, holding this process's SQLite write turn until it ends.
#[derive(Debug)]
pub struct WriteTxn {
    txn: DatabaseTransaction,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTxn {
    /// The transaction, to run statements in.
    pub fn txn(&self) -> &DatabaseTransaction {
        &self.txn
    }

    /// Commits, then gives up the turn.
    pub async fn commit(self) -> Result<(), DbErr> {
        self.txn.commit().await?;
        crate::sqlite_reads::data_changed();
        if self._turn.is_some() {
            SQLITE_WRITTEN.store(true, std::sync::atomic::Ordering::Release);
        }
        Ok(())
    }

    /// Rolls back, then gives up the turn.
    pub async fn rollback(self) -> Result<(), DbErr> {
        self.txn.rollback().await
    }
}

/// Whether a writing transaction on SQLite committed since this process last asked.
static SQLITE_WRITTEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process committed a write to SQLite through [`begin_write`] since the last
/// call: the background checkpointer's cue that there is log to copy back.
pub fn take_sqlite_written() -> bool {
    SQLITE_WRITTEN.swap(false, std::sync::atomic::Ordering::AcqRel)
}

/// Tells the background checkpointer that a writer outside sea-orm (see `sqlite_writes`)
/// committed.
pub fn note_sqlite_written() {
    SQLITE_WRITTEN.store(true, std::sync::atomic::Ordering::Release);
}

/// Waits for this process's SQLite write turn (see [`begin_write`]), for a writer that does
/// not go through sea-orm.
pub async fn sqlite_write_turn() -> tokio::sync::OwnedMutexGuard<()> {
    SQLITE_WRITE_TURN.clone().lock_owned().await
}

/// Begins a writing transaction (see [`WriteTxn`]).
pub async fn begin_write(db: &DatabaseConnection) -> Result<WriteTxn, DbErr> {
    let turn = match db.get_database_backend() {
        DatabaseBackend::Sqlite => Some(SQLITE_WRITE_TURN.clone().lock_owned().await),
        _ => None,
    };
    let txn = db.begin().await?;
    if turn.is_some() {
        // sqlx begins SQLite's transactions deferred: a transaction that read first and then
        // writes while another process holds the write lock fails at once (SQLite will not
        // wait there, for fear of a deadlock). A write as the first statement takes the lock
        // at the start instead, waiting out the busy timeout like BEGIN IMMEDIATE; it changes
        // nothing.
        sea_orm::ConnectionTrait::execute_unprepared(
            &txn,
            "UPDATE audit_head SET seq = seq WHERE 0",
        )
        .await?;
    }
    Ok(WriteTxn { txn, _turn: turn })
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, Statement};

    use super::*;

    async fn autocheckpoint(db: &DatabaseConnection) -> i64 {
        let row = db
            .query_one_raw(Statement::from_string(
                DatabaseBackend::Sqlite,
                "PRAGMA wal_autocheckpoint",
            ))
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index(0).unwrap()
    }

    /// The server's pool on a SQLite file leaves the log to the background checkpointer;
    /// every other process's pool (a sync, a migration), and a store no checkpointer runs on,
    /// keeps SQLite's own.
    #[tokio::test]
    async fn only_the_servers_pool_on_a_sqlite_file_leaves_checkpoints_to_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let settings = |url: String| DatabaseSettings {
            url,
            max_connections: 2,
        };
        let file = settings(format!("sqlite://{}/hub.db?mode=rwc", dir.path().display()));
        assert_eq!(
            autocheckpoint(&connect_server(&file).await.unwrap()).await,
            0
        );
        assert_eq!(autocheckpoint(&connect(&file).await.unwrap()).await, 1000);
        let memory = settings("sqlite::memory:".into());
        assert_eq!(
            autocheckpoint(&connect_server(&memory).await.unwrap()).await,
            1000
        );
    }
}
