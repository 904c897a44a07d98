//! Where the served path reads the store, chosen once when the server starts.
//!
//! Writes always go through sea-orm's pool. The reads of a served query (a person, found by id
//! or by an identifier, their snapshots, the current extracts and their rows, rejected
//! records, plan items) go the cheapest way the store allows:
//! - a SQLite file: inline, through `rusqlite` (see `sqlite_reads`);
//! - PostgreSQL: on connections of their own (see `pg_reads`);
//! - anything else (an in-memory SQLite database): through the pool.
//!
//! [`Reader`] is a sea-orm connection either way, so a read with no inline form runs on the
//! pool (a SQLite file) or the readers (PostgreSQL).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use sea_orm::{
    ConnectionTrait, DatabaseBackend, DatabaseConnection, DbBackend, DbErr, ExecResult,
    QueryResult, Statement,
};

use crate::pg_reads::PgReads;
use crate::sqlite_reads::SqliteReads;

/// Where the served path reads.
#[derive(Clone, Debug)]
pub enum Reader {
    /// sea-orm's pool.
    Pool(DatabaseConnection),
    /// A SQLite file: its own reads inline, anything else on the pool.
    SqliteFile(DatabaseConnection, Arc<SqliteReads>),
    /// PostgreSQL's readers.
    Postgres(Arc<PgReads>),
}

impl Reader {
    /// The reader for the store `db` connects to, at `url` (`max_connections` bounds the
    /// PostgreSQL readers); its reads count in `queries` with the pool's. The store handed in
    /// decides the kind: the URL alone could name another store.
    pub fn open(
        db: &DatabaseConnection,
        url: &str,
        max_connections: u32,
        queries: &Arc<AtomicU64>,
    ) -> Self {
        let pool = || Self::Pool(db.clone());
        match db.get_database_backend() {
            DatabaseBackend::Sqlite => SqliteReads::open(url, queries.clone())
                .map_or_else(pool, |l| Self::SqliteFile(db.clone(), Arc::new(l))),
            DatabaseBackend::Postgres => PgReads::open(url, max_connections, queries.clone())
                .map_or_else(pool, |pg| Self::Postgres(Arc::new(pg))),
            _ => pool(),
        }
    }

    /// PostgreSQL's readers, when the store is PostgreSQL.
    pub fn postgres(&self) -> Option<&Arc<PgReads>> {
        match self {
            Self::Postgres(reads) => Some(reads),
            _ => None,
        }
    }

    /// The inline SQLite reads, when the store is a SQLite file.
    pub fn sqlite(&self) -> Option<&Arc<SqliteReads>> {
        match self {
            Self::SqliteFile(_, local) => Some(local),
            _ => None,
        }
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for Reader {
    fn get_database_backend(&self) -> DbBackend {
        match self {
            Self::Pool(db) | Self::SqliteFile(db, _) => db.get_database_backend(),
            Self::Postgres(pg) => pg.get_database_backend(),
        }
    }

    async fn execute_raw(&self, statement: Statement) -> Result<ExecResult, DbErr> {
        match self {
            Self::Pool(db) | Self::SqliteFile(db, _) => db.execute_raw(statement).await,
            Self::Postgres(pg) => pg.execute_raw(statement).await,
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        match self {
            Self::Pool(db) | Self::SqliteFile(db, _) => db.execute_unprepared(sql).await,
            Self::Postgres(pg) => pg.execute_unprepared(sql).await,
        }
    }

    async fn query_one_raw(&self, statement: Statement) -> Result<Option<QueryResult>, DbErr> {
        match self {
            Self::Pool(db) | Self::SqliteFile(db, _) => db.query_one_raw(statement).await,
            Self::Postgres(pg) => pg.query_one_raw(statement).await,
        }
    }

    async fn query_all_raw(&self, statement: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match self {
            Self::Pool(db) | Self::SqliteFile(db, _) => db.query_all_raw(statement).await,
            Self::Postgres(pg) => pg.query_all_raw(statement).await,
        }
    }
}
