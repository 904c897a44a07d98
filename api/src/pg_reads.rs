//! Reads of a PostgreSQL store on connections of their own, without sqlx's pool.
//!
//! sqlx's pool tests a connection with a ping (a full round trip to the server) every time it
//! hands one back to the pool, and by default every time it hands one out as well. A served
//! combined budget is about eight small indexed reads, so through the pool it cost three round
//! trips a read, two of them empty; the benchmark's profile of the hub and the server was
//! mostly the system calls and wake-ups those round trips cost on both sides. The served path's
//! reads therefore go through [`PgReads`]: a few connections kept here, each used by one read
//! at a time and put back as soon as the read's rows are in, so a read is one round trip. The
//! statements are still sea-orm's (it implements [`ConnectionTrait`]), so the queries are the
//! ones every other path runs, prepared once per connection.
//!
//! The readers' sessions keep PostgreSQL's default plan cache mode: a statement is planned for
//! its values a few times, then a generic plan is kept for the session. Planning had been a
//! third of the server's CPU on the served path. The pool's connections still plan every
//! statement for its values (see `db::tune_postgres`), because the sync writes into tables as
//! they grow; after a bulk write `db::refresh_statistics` analyzes the tables it filled, which
//! makes PostgreSQL plan the readers' statements again.
//!
//! The served path's reads, the person (`persons::get_served`), their views' bundle
//! (`pg_bundle::read_shared`), and both at once for a query of one person's budget
//! (`persons::get_served_with_views`), are also merged across concurrent requests (`coalesce`): at
//! most [`MERGED_READS`] of each kind run at once, and the requests that arrive meanwhile are
//! answered together by the next statement. A statement's fixed cost on the server (the round
//! trip, a backend's wake-up, the executor's start) had become most of PostgreSQL's share of
//! a served query.
//!
//! The readers' sessions also turn JIT compilation off. Their statements are index lookups of
//! a few people's rows, but the planner cannot see how many ids or pairs a JSON parameter
//! holds and guesses 100, then multiplies such guesses through the joins. Past PostgreSQL's
//! `jit_above_cost` a read is compiled first: a trial statement that read people with their
//! identifiers and views was estimated over that line at the benchmark's scale, and spent
//! 45 ms compiling for a read of 0.4 ms (`EXPLAIN ANALYZE`). The served reads' estimates sit
//! below it today, but only by the planner's guesses; a served read never gains from JIT.
//!
//! Each connection opens with `default_transaction_read_only`, so nothing here can write. A
//! connection whose read failed, or whose read was abandoned half way (a client that went
//! away), is closed rather than put back, since its state is unknown.
//!
//! The one exception keeps sessions of its own: the statement that stores a view's answers
//! (`pg_snapshots`) runs on [`PgReads::snapshot_writer`], a few writable sessions kept the same
//! way and planning the same way. Through the pool, that statement was planned afresh on every
//! use, and planning was a third of its time; here it keeps a generic plan per session. Like a
//! read, it is asked again once on a new session when its connection was lost: it is safe to
//! ask twice (see `pg_snapshots`).
//!
//! Those sessions also commit without waiting for the log to reach the disk
//! (`synchronous_commit = off`). A snapshot is a copy of a partner's answer, kept for later
//! views. Should the database server or its machine fail before PostgreSQL's log writer
//! flushes it (up to three times `wal_writer_delay`, 600 ms by default), or a standby take
//! over without it, the last snapshots written are lost whole, never in part: the store holds
//! the snapshot before them, or none. What that costs: the next view asks the partner again;
//! a partner that is down meanwhile has its stream served from the older snapshot (STALE), or
//! UNAVAILABLE if there was none; and a plan share's award (`FundingShare.award`, read only
//! from the store) shows the older award, or none, until a view keeps the answer again.
//! Nothing else is written on those sessions (they refuse sea-orm's writes, and run only
//! `pg_snapshots`' statement and a read). The view's read of the person's data is still
//! recorded in the audit log before its answer leaves, on the appender's own session, which
//! keeps the server's setting (on, by default: its commit waits for its flush). A view served
//! later from a kept snapshot records its read after reading it, so that flush also covers
//! the snapshot. With every commit waiting for its flush, a first view waited for two (the
//! audit's and its snapshots', made at once, their flushes likely one after the other when
//! nothing else shares them): without the snapshots' wait, the benchmark's hub overhead above
//! the partners on PostgreSQL (p50, one quick run at full scale each way) fell from 1.14 ms to
//! 0.65 ms. A sync's snapshots go through the pool and wait for their flushes as before.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};
use sea_orm::sqlx::{self, ConnectOptions as _, Connection as _};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, ExecResult, QueryResult, RuntimeErr, Statement};
use sea_query_sqlx::SqlxValues;
use tokio::sync::Semaphore;

use crate::coalesce::Coalesce;
use crate::services::persons::PersonRecord;

/// The `application_name` the readers' sessions carry (in `pg_stat_activity`).
pub const READER_NAME: &str = "tributary-reader";

/// The `application_name` of the views' snapshot writer's sessions (see `pg_snapshots`).
pub const SNAPSHOT_WRITER_NAME: &str = "tributary-snapshots";

/// The most sessions the views' snapshot writer keeps.
const SNAPSHOT_WRITERS: usize = 4;

/// How long a read waits for a free connection before it fails, as sqlx's pool would.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most requests one merged read answers (see `coalesce`).
const MERGED_REQUESTS: usize = 64;

/// The most merged reads of one kind running at once.
///
/// A served read's statement costs PostgreSQL mostly for being a statement: measured with
/// `pgbench` on the benchmark's store (100,000 people), about 170 µs of the server's CPU for
/// the statement and 80 µs more for each person it reads. So the fewer statements, the more
/// people each reads, the less of the two cores the server takes from the hub. Quick runs at
/// full scale on the benchmark's 2 cores, superBudget served from snapshots: with 2 at once,
/// 5,189, 5,598 and 5,575 queries a second closed loop (PostgreSQL 165 to 173 µs a query) and
/// p99 6.5 to 11.8 ms at a constant 3,000 a second; with 1, 6,150 and 6,409 (128 to 135 µs)
/// and 5.7 and 5.0 ms. (Before the person came with their views in one statement, 1 and 2
/// had served about the same, and 4 less: more statements at once only meant more backends
/// taking turns on the cores, and smaller merges.) A request on a quiet hub is still read at
/// once: only those that arrive while a read runs wait for the next.
const MERGED_READS: usize = 1;

/// A connection idle longer than this is pinged before it is used (the server may have closed
/// it meanwhile); one in steady use is not.
const TEST_IF_IDLE_FOR: Duration = Duration::from_secs(30);

/// The longest a test of an idle connection waits for the server's answer.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection options for `url`, when it names a PostgreSQL database.
pub(crate) fn options_for(url: &str) -> Option<PgConnectOptions> {
    if !(url.starts_with("postgres:") || url.starts_with("postgresql:")) {
        return None;
    }
    PgConnectOptions::from_str(url).ok()
}

/// A connection put aside at `since`, if it can still be used: one idle longer than
/// [`TEST_IF_IDLE_FOR`] is pinged first (the server may have closed it meanwhile), and is
/// dropped when the ping fails or goes unanswered for [`PING_TIMEOUT`].
pub(crate) async fn still_usable(
    (mut connection, since): (PgConnection, Instant),
) -> Option<PgConnection> {
    if since.elapsed() <= TEST_IF_IDLE_FOR {
        return Some(connection);
    }
    let answered = tokio::time::timeout(PING_TIMEOUT, connection.ping()).await;
    matches!(answered, Ok(Ok(()))).then_some(connection)
}

/// Readers over one PostgreSQL database.
#[derive(Debug)]
pub struct PgReads {
    options: PgConnectOptions,
    /// Connections not in use, each with the moment it was put back.
    idle: std::sync::Mutex<Vec<(PgConnection, Instant)>>,
    /// One permit per connection that may be open at once.
    permits: Semaphore,
    queries: Arc<AtomicU64>,
    /// The served views' reads of concurrent requests, merged (see `pg_bundle::read_shared`).
    pub(crate) bundles: Coalesce<crate::pg_bundle::Asked, crate::pg_bundle::Bundle>,
    /// The served path's person reads of concurrent requests, merged (see
    /// `persons::get_served`).
    pub(crate) people: Coalesce<String, HashMap<String, PersonRecord>>,
    /// The served path's person reads for a budget, with their views' reads, of concurrent
    /// requests, merged (see `persons::get_served_with_views`).
    pub(crate) person_views: Coalesce<String, crate::pg_bundle::PeopleViews>,
    /// The statement of those reads (`pg_bundle::people_views_sql_for`), written for the
    /// server's connectors when first needed and kept: a server's readers serve one registry.
    pub(crate) person_views_sql: std::sync::OnceLock<Arc<str>>,
    /// Sessions of their own, planning as the readers' do, for the one statement that keeps a
    /// view's answers (see `pg_snapshots`); `None` on the writer's own sessions. Only a
    /// statement that is safe to ask twice may run there: one whose connection was lost is
    /// asked again, as a read is. And only one whose write may be lost in a crash: their
    /// commits do not wait for the flush (see the module's notes).
    pub(crate) snapshot_writer: Option<Box<PgReads>>,
}

impl PgReads {
    /// The sessions that keep a view's answers (see the field of that name), when these are
    /// the readers; for tests, which check how they are set. Their commits do not wait for
    /// the flush: write nothing there that must outlast a crash.
    #[doc(hidden)]
    pub fn snapshot_writer(&self) -> Option<&PgReads> {
        self.snapshot_writer.as_deref()
    }
}

fn query_failed(e: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(Arc::new(e)))
}

fn read_only() -> DbErr {
    DbErr::Custom("the served path's PostgreSQL readers do not write".into())
}

/// A connection lent to one read. It goes back to the idle list only through [`Lease::done`];
/// dropped any other way (an error, or the read's future dropped mid-flight) it is closed.
struct Lease<'a> {
    reads: &'a PgReads,
    connection: PgConnection,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Lease<'_> {
    fn done(self) {
        self.reads
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((self.connection, Instant::now()));
    }
}

impl PgReads {
    /// Readers for the PostgreSQL database at `url`, at most `max_connections` open at once,
    /// planning as PostgreSQL does by default (see the module's notes). `None` when `url` is
    /// not PostgreSQL.
    pub fn open(url: &str, max_connections: u32, queries: Arc<AtomicU64>) -> Option<Self> {
        let options = options_for(url)?
            .options([("default_transaction_read_only", "on"), ("jit", "off")])
            .application_name(READER_NAME)
            .disable_statement_logging();
        let writer = options_for(url)?
            .options([("jit", "off"), ("synchronous_commit", "off")])
            .application_name(SNAPSHOT_WRITER_NAME)
            .disable_statement_logging();
        let permits = usize::try_from(max_connections.max(1)).unwrap_or(1);
        let mut reads = Self::sessions(options, permits, queries.clone());
        reads.snapshot_writer = Some(Box::new(Self::sessions(
            writer,
            permits.min(SNAPSHOT_WRITERS),
            queries,
        )));
        Some(reads)
    }

    fn sessions(options: PgConnectOptions, permits: usize, queries: Arc<AtomicU64>) -> Self {
        Self {
            options,
            idle: std::sync::Mutex::new(Vec::new()),
            permits: Semaphore::new(permits),
            queries,
            bundles: Coalesce::new(MERGED_READS, MERGED_REQUESTS),
            people: Coalesce::new(MERGED_READS, MERGED_REQUESTS),
            person_views: Coalesce::new(MERGED_READS, MERGED_REQUESTS),
            person_views_sql: std::sync::OnceLock::new(),
            snapshot_writer: None,
        }
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, DbErr> {
        use sea_orm::ConnAcquireErr;
        tokio::time::timeout(ACQUIRE_TIMEOUT, self.permits.acquire())
            .await
            .map_err(|_| DbErr::ConnectionAcquire(ConnAcquireErr::Timeout))?
            .map_err(|_| DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed))
    }

    async fn connect(&self) -> Result<PgConnection, DbErr> {
        PgConnection::connect_with(&self.options)
            .await
            .map_err(|e| DbErr::Conn(RuntimeErr::SqlxError(Arc::new(e))))
    }

    /// An idle connection, or a new one when none is idle.
    async fn lease(&self) -> Result<Lease<'_>, DbErr> {
        let permit = self.permit().await?;
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        // A connection the server has closed is dropped, and a new one opened.
        let idle = match idle {
            Some(idle) => still_usable(idle).await,
            None => None,
        };
        let connection = match idle {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(Lease {
            reads: self,
            connection,
            _permit: permit,
        })
    }

    /// A new connection, whatever is idle.
    async fn lease_new(&self) -> Result<Lease<'_>, DbErr> {
        let permit = self.permit().await?;
        Ok(Lease {
            reads: self,
            connection: self.connect().await?,
            _permit: permit,
        })
    }

    async fn fetch_all(&self, statement: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let values = statement.values.unwrap_or(sea_orm::Values(Vec::new()));
        let sql = statement.sql.as_str();
        let run = |values| sqlx::query_with(sqlx::AssertSqlSafe(sql), SqlxValues(values));
        let mut lease = self.lease().await?;
        let rows = match run(values.clone()).fetch_all(&mut lease.connection).await {
            Ok(rows) => rows,
            // A read changes nothing (and the snapshot writer's statement is safe to ask twice),
            // so one that lost its connection (the server restarted, or closed an idle
            // session) is asked again once, on a new connection.
            Err(e) if connection_lost(&e) => {
                drop(lease);
                lease = self.lease_new().await?;
                run(values)
                    .fetch_all(&mut lease.connection)
                    .await
                    .map_err(query_failed)?
            }
            Err(e) => return Err(query_failed(e)),
        };
        lease.done();
        Ok(rows.into_iter().map(QueryResult::from).collect())
    }
}

/// Whether `e` says the connection itself is gone, not that the statement was refused.
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        // SQLSTATE class 08 (connection exception) and 57P (the server shutting the session
        // down: admin_shutdown, crash_shutdown, cannot_connect_now, idle_session_timeout).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for PgReads {
    fn get_database_backend(&self) -> DbBackend {
        DbBackend::Postgres
    }

    async fn execute_raw(&self, _: Statement) -> Result<ExecResult, DbErr> {
        Err(read_only())
    }

    async fn execute_unprepared(&self, _: &str) -> Result<ExecResult, DbErr> {
        Err(read_only())
    }

    async fn query_one_raw(&self, statement: Statement) -> Result<Option<QueryResult>, DbErr> {
        Ok(self.fetch_all(statement).await?.into_iter().next())
    }

    async fn query_all_raw(&self, statement: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.fetch_all(statement).await
    }
}
