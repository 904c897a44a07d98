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
        .map_sqlx_sqlite_opts(|opts| {
            opts.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(15))
                .foreign_keys(true)
                // 8 MiB of page cache per connection (SQLite's default is 2 MiB): an extract's
                // index pages stay cached while 100,000 rows go in.
                .pragma("cache_size", "-8192")
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
        self.txn.commit().await
    }

    /// Rolls back, then gives up the turn.
    pub async fn rollback(self) -> Result<(), DbErr> {
        self.txn.rollback().await
    }
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
    Ok(WriteTxn {
        txn: db.begin().await?,
        _turn: turn,
    })
}
