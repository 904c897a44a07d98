//! The hash-chained audit log.
//!
//! Every change the hub owns writes its event in the same transaction as the change. Each event
//! carries the hash of the one before, so deleting, editing or reordering any event breaks the
//! chain. Appends are serialised on the `audit_head` row: the first statement of every writing
//! transaction takes that row's lock (PostgreSQL) or the database's write lock (SQLite), so two
//! hub instances can never fork the chain or leave a gap.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use entities::{audit_event, audit_head};
use sea_orm::sea_query::Expr;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};
use sea_orm::sqlx::{self, ConnectOptions as _};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};

/// Events read per page while verifying.
const VERIFY_PAGE: u64 = 5000;

/// The hash the first event chains from.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One event to append.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    /// What happened, e.g. `person.registered`.
    pub action: &'a str,
    /// The person it concerns, if any.
    pub person_id: Option<&'a str>,
    /// Structured detail. Never names, dates of birth or identifier values.
    pub detail: Value,
}

/// Begins a writing transaction whose first act is to take the audit chain's head lock.
pub async fn begin_write(db: &DatabaseConnection) -> ApiResult<crate::db::WriteTxn> {
    let write = crate::db::begin_write(db).await?;
    audit_head::Entity::update_many()
        .col_expr(audit_head::Column::Seq, Expr::col(audit_head::Column::Seq))
        .filter(audit_head::Column::Id.eq(1))
        .exec(write.txn())
        .await?;
    Ok(write)
}

/// Appends an event inside `txn`, which must come from [`begin_write`].
pub async fn append(
    txn: &DatabaseTransaction,
    actor: &Principal,
    event: NewEvent<'_>,
) -> ApiResult<()> {
    append_many(txn, actor, std::slice::from_ref(&event)).await
}

/// The most requests one group commit takes; more wait for the next.
const MAX_GROUP: usize = 256;

/// A request's reads waiting to be written.
struct PendingReads {
    actor: Principal,
    reads: Vec<(Option<String>, &'static str)>,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

impl std::fmt::Debug for PendingReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingReads")
            .field("reads", &self.reads.len())
            .finish()
    }
}

/// Records the reads of concurrent requests together ("group commit"). A request that finds
/// no group being written starts a writer task on its own thread; that task takes every
/// request waiting, appends all their events in arrival order in one transaction, under the
/// same head lock as every other audit write, tells each request once that transaction has
/// committed, and goes on with whoever arrived meanwhile until none wait. A request still
/// answers only after its reads are stored; what changes is that thirty requests arriving
/// together cost one commit, not thirty commits queueing on the write lock.
///
/// The writer runs where the requests are, not on a thread of its own: a writer thread cost
/// every group two thread wake-ups (the writer's, then the request's), and on PostgreSQL the
/// group's statement went from the request's thread to the writer's and back.
#[derive(Clone)]
pub struct ReadRecorder {
    shared: std::sync::Arc<Recorder>,
}

impl std::fmt::Debug for ReadRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadRecorder").finish_non_exhaustive()
    }
}

/// What every request's [`ReadRecorder`] shares.
struct Recorder {
    db: DatabaseConnection,
    /// A SQLite file store's readers and their inline writer, which write the groups.
    local: Option<std::sync::Arc<crate::sqlite_reads::SqliteReads>>,
    /// Set by the background checkpointer when the writer should copy back the rest of the
    /// log (see [`Checkpointer`]).
    catch_up: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// On PostgreSQL, what each thread's appender session connects with (see [`PgAppender`]).
    appender: Option<PgAppender>,
    /// The appender session of each thread that has written a group. A connection's socket
    /// belongs to the runtime of the thread that opened it, and a worker's runtime sees its
    /// answers first: written from another thread, every answer would wake two. (A worker
    /// thread that ends, which actix replaces only after a panic, leaves its session here.)
    /// Keyed by `ThreadId`, which is never reused, rather than a `thread_local::ThreadLocal`
    /// as the partners' clients are: that reuses an ended thread's slot, and would hand its
    /// session, whose socket belonged to a runtime now gone, to the replacement thread.
    appenders: std::sync::Mutex<std::collections::HashMap<std::thread::ThreadId, PgAppender>>,
    state: std::sync::Mutex<Waiting>,
    /// Groups that waited out another process's write lock.
    waited: std::sync::atomic::AtomicU64,
}

/// The requests waiting for their reads to be written, and who writes them.
#[derive(Default)]
struct Waiting {
    reads: Vec<PendingReads>,
    /// Whether a writer task is running: it takes everything waiting before it stops.
    writing: bool,
    /// The chain's head as the last group left it (see [`write_group`]), kept while no
    /// writer runs.
    head: Option<(i64, String)>,
}

impl Recorder {
    fn state(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn appenders(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::thread::ThreadId, PgAppender>>
    {
        self.appenders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The writer task: writes every group waiting, one after the other, until none waits.
    /// `leading` is its hold on [`Waiting::writing`], made before the task was spawned.
    async fn write_waiting(mut leading: Leading) {
        let recorder = leading.recorder.clone();
        let mut head = recorder.state().head.take();
        loop {
            let group: Vec<PendingReads> = {
                let mut state = recorder.state();
                if state.reads.is_empty() {
                    state.writing = false;
                    state.head = head;
                    leading.finished = true;
                    return;
                }
                let taken = state.reads.len().min(MAX_GROUP);
                state.reads.drain(..taken).collect()
            };
            let outcome = recorder.write(&group, &mut head).await;
            let outcome = outcome.map_err(|e| {
                tracing::error!(error = ?e, requests = group.len(), "recording reads failed");
                e.to_string()
            });
            for pending in group {
                let _ = pending.done.send(outcome.clone());
            }
            // The requests this thread has ready run first, and join the next group.
            tokio::task::yield_now().await;
        }
    }

    /// Writes one group.
    async fn write(
        &self,
        group: &[PendingReads],
        head: &mut Option<(i64, String)>,
    ) -> ApiResult<()> {
        let Some(local) = &self.local else {
            let thread = std::thread::current().id();
            let kept = self.appenders().remove(&thread);
            let mut appender = kept.or_else(|| self.appender.as_ref().map(PgAppender::fresh));
            let outcome = write_group(&self.db, appender.as_mut(), group, head).await;
            if let Some(appender) = appender {
                self.appenders()
                    .insert(std::thread::current().id(), appender);
            }
            return outcome;
        };
        if self
            .catch_up
            .as_ref()
            .is_some_and(|c| c.swap(false, std::sync::atomic::Ordering::AcqRel))
        {
            // Copying the log back waits for the log and the file to be synced: on a
            // blocking thread, not the requests'. A failure costs only a longer log.
            let local = local.clone();
            let caught = tokio::task::spawn_blocking(move || {
                futures::executor::block_on(local.catch_up_log())
            })
            .await;
            match caught {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "copying the rest of the log back failed"),
                Err(e) => tracing::warn!(error = %e, "copying the rest of the log back stopped"),
            }
        }
        // On the requests' thread it never waits for another process's write lock.
        let inline = local
            .writer()
            .transaction(std::time::Duration::ZERO, |w| {
                append_sqlite(w.connection(), group)
            })
            .await;
        match inline {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                // Another process (a sync) holds the store's write lock: the group goes
                // through the pool, whose connection waits for it (up to 15 seconds) on a
                // thread of its own, as the views' snapshots do (`sources::store_snapshots_inline`).
                self.waited
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                write_group(&self.db, None, group, head).await
            }
            out => out.map_err(|e| ApiError::internal(e, "recording reads in the audit log")),
        }
    }
}

/// A writer task's hold on [`Waiting::writing`], made by the request that spawns the task and
/// moved into it, so it is let go even if the task is dropped before it first runs. A task
/// dropped before it finished (its runtime stopped, or it panicked) lets go: every request
/// still waiting is told the writer stopped, as are those of the group it held, and the next
/// request starts a writer afresh, from the head as stored. (A group whose commit was already
/// under way may still commit: its requests, told otherwise, withhold their answers, and
/// their reads may be recorded again.)
struct Leading {
    recorder: std::sync::Arc<Recorder>,
    finished: bool,
}

impl Drop for Leading {
    fn drop(&mut self) {
        if !self.finished {
            let mut state = self.recorder.state();
            state.writing = false;
            state.head = None;
            state.reads.clear();
        }
    }
}

impl ReadRecorder {
    /// The recorder of a server on `db`. With a SQLite file store (`local`), the groups are
    /// written inline on its writer (see `sqlite_writes`), and a background task copies the
    /// log back into the file (see [`Checkpointer`]); otherwise through sea-orm.
    ///
    /// On PostgreSQL, `appender` is what the writers' own sessions connect with, for their
    /// one-statement appends (see [`PgAppender`]); without one they go through the pool.
    ///
    /// Call it on a Tokio runtime that lasts as long as the server: the checkpointer runs
    /// there.
    pub fn start(
        db: DatabaseConnection,
        local: Option<std::sync::Arc<crate::sqlite_reads::SqliteReads>>,
        appender: Option<PgAppender>,
    ) -> Self {
        let checkpoints = local
            .as_ref()
            .map(|l| Checkpointer::new(l.path().to_path_buf(), Some(l.clone())));
        let shared = std::sync::Arc::new(Recorder {
            db,
            catch_up: checkpoints.as_ref().map(|c| c.catch_up_wanted.clone()),
            local,
            appender,
            appenders: Default::default(),
            state: Default::default(),
            waited: Default::default(),
        });
        if let Some(checkpoints) = checkpoints {
            tokio::spawn(checkpoint_now_and_then(
                std::sync::Arc::downgrade(&shared),
                checkpoints,
            ));
        }
        Self { shared }
    }

    /// How many groups have waited out another process's write lock.
    #[cfg(test)]
    fn waited_out(&self) -> u64 {
        self.shared
            .waited
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records one request's reads; returns once they are committed.
    pub async fn record(
        &self,
        actor: &Principal,
        reads: Vec<(Option<String>, &'static str)>,
    ) -> ApiResult<()> {
        if reads.is_empty() {
            return Ok(());
        }
        let (done, committed) = tokio::sync::oneshot::channel();
        let lead = {
            let mut state = self.shared.state();
            state.reads.push(PendingReads {
                actor: actor.clone(),
                reads,
                done,
            });
            !std::mem::replace(&mut state.writing, true)
        };
        if lead {
            // On this thread's runtime (an actix worker's runs one thread): it runs as soon
            // as this request waits.
            tokio::spawn(Recorder::write_waiting(Leading {
                recorder: self.shared.clone(),
                finished: false,
            }));
        }
        committed
            .await
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("the audit writer has stopped")))?
            .map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))
    }
}

/// Every [`CHECKPOINT_EVERY`], while the server's recorder lasts: lets idle readers' old views
/// go, then starts a background checkpoint if this process has written since the last began.
async fn checkpoint_now_and_then(
    recorder: std::sync::Weak<Recorder>,
    mut checkpoints: Checkpointer,
) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Whether anything was written since the last checkpoint began.
    let mut written = false;
    loop {
        tick.tick().await;
        let Some(recorder) = recorder.upgrade() else {
            return;
        };
        // Idle readers let go of old views first, so the checkpoint can copy the whole log
        // back.
        if let Some(readers) = &recorder.local {
            readers.end_old_views();
        }
        // Every commit this process made: the groups and snapshots its inline writer wrote
        // (it reports each), and the server pool's writes (it leaves the log to this
        // checkpointer too).
        written |= crate::db::take_sqlite_written();
        if written {
            // Not waited for: the next group goes on meanwhile.
            written = checkpoints.start().is_none();
        }
    }
}

/// The event recording that a request read `action` (of `person_id`'s data).
fn read_event<'a>(person_id: Option<&'a str>, action: &'a str) -> NewEvent<'a> {
    NewEvent {
        action,
        person_id,
        detail: Value::Null,
    }
}

/// Events one statement of [`write_group`]'s short path carries at most (13 values each;
/// PostgreSQL binds at most 65,535 values a statement).
const ONE_STATEMENT_EVENTS: usize = 500;

/// Writes a group through sea-orm: PostgreSQL, or a SQLite store that is not a file.
///
/// The locked path takes five statements and a commit, each a round trip: lock the head, read
/// it, insert, move the head, commit. On PostgreSQL the writer remembers the head its last
/// group left (`head`) and first tries one statement that moves the head only if it is still
/// there and inserts the events only if it moved. Another writer (a mutation's, a sync
/// process's) moves the head in between only now and then; then that statement changes
/// nothing, and the locked path writes the group.
async fn write_group(
    db: &DatabaseConnection,
    appender: Option<&mut PgAppender>,
    group: &[PendingReads],
    head: &mut Option<(i64, String)>,
) -> ApiResult<()> {
    let events: Vec<Vec<NewEvent<'_>>> = group
        .iter()
        .map(|p| {
            p.reads
                .iter()
                .map(|(person, what)| read_event(person.as_deref(), what))
                .collect()
        })
        .collect();
    let groups: Vec<(&Principal, &[NewEvent<'_>])> = group
        .iter()
        .zip(&events)
        .map(|(p, e)| (&p.actor, e.as_slice()))
        .collect();
    let count: usize = events.iter().map(Vec::len).sum();
    if db.get_database_backend() == sea_orm::DatabaseBackend::Postgres
        && count <= ONE_STATEMENT_EVENTS
        && let Some(expected) = head.take()
        && let Some((sql, values, moved)) = append_if_head_is(&expected, &groups)
        && match appender {
            Some(appender) => appender.execute(db, &sql, values).await?,
            None => {
                let statement = sea_orm::Statement::from_sql_and_values(
                    sea_orm::DatabaseBackend::Postgres,
                    sql.into_owned(),
                    values,
                );
                db.execute_raw(statement).await?.rows_affected()
            }
        } == count as u64
    {
        *head = Some(moved);
        return Ok(());
    }
    let write = begin_write(db).await?;
    let txn = write.txn();
    let moved = append_groups(txn, &groups).await?;
    write.commit().await?;
    *head = moved;
    Ok(())
}

/// The `application_name` of the group writers' own PostgreSQL sessions.
pub const APPENDER_NAME: &str = "tributary-audit";

/// A group writer's own PostgreSQL session, for the one statement that appends a group of
/// read events (see [`write_group`]): one for each thread that writes groups.
///
/// The pool's sessions plan every statement for its values (`db::tune_postgres`), and that
/// statement, a head check and an insert of a group's rows, was planned afresh for every
/// group: the benchmark's profile of the server put a tenth of PostgreSQL's CPU on the served
/// path in planning it. This session keeps PostgreSQL's default plan cache mode, so after a
/// few executions of each statement (one text per group size) a generic plan is kept; the
/// statement inserts into a table by its values and moves one row by its key, so the generic
/// plan is the custom one. Measured over three interleaved rounds of quick runs at full scale
/// (superBudget served from snapshots, 32 connections), PostgreSQL's CPU a query fell from
/// 171, 201 and 169 µs to 154, 142 and 139 µs, and throughput rose from 4,998, 3,955 and
/// 4,888 to 5,139, 5,598 and 5,666 queries a second. Writing the group the locked way, when
/// another writer moved the head, stays on the pool.
///
/// The session is opened when first needed (within [`APPENDER_WAIT`]) and pinged when it sat
/// idle for a while. When it cannot be opened, nothing has reached the server, so the group's
/// statement goes through the pool instead, and the appender tries again only after
/// [`APPENDER_RETRY`]: a server with no connection to spare costs the planning saved here,
/// never a group. A session that fails once its statement was sent (the statement may have
/// committed) is dropped and the group reported failed to its requests, as through the pool;
/// the next group then takes the locked path, and the one after opens a new session.
pub struct PgAppender {
    options: PgConnectOptions,
    connection: Option<(PgConnection, std::time::Instant)>,
    /// When opening a session last failed.
    failed_at: Option<std::time::Instant>,
    queries: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for PgAppender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgAppender")
            .field("connected", &self.connection.is_some())
            .finish_non_exhaustive()
    }
}

/// The longest the appender waits to open its session, or for its statement (its idle ping is
/// bounded as the readers' is, see `pg_reads::still_usable`), as the pool bounds its waits: the writer is one task, and every request reading personal data
/// waits on it.
pub const APPENDER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long after failing to open a session the appender leaves its statements to the pool.
const APPENDER_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

impl PgAppender {
    /// The appender for the PostgreSQL database at `url`, its statements counted in `queries`;
    /// `None` when `url` is not PostgreSQL.
    pub fn open(url: &str, queries: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Option<Self> {
        let options = crate::pg_reads::options_for(url)?
            .application_name(APPENDER_NAME)
            .disable_statement_logging();
        Some(Self {
            options,
            connection: None,
            failed_at: None,
            queries,
        })
    }

    /// Another appender like this one, with no session yet: the next thread's.
    fn fresh(&self) -> Self {
        Self {
            options: self.options.clone(),
            connection: None,
            failed_at: None,
            queries: self.queries.clone(),
        }
    }

    /// The session, opened (or tested, after a while idle) as needed; `None` when it cannot
    /// be opened now.
    async fn session(&mut self) -> Option<&mut PgConnection> {
        let usable = match self.connection.take() {
            Some(kept) => crate::pg_reads::still_usable(kept).await,
            None => None,
        };
        let connection = match usable {
            Some(c) => c,
            None => {
                if self
                    .failed_at
                    .is_some_and(|at| at.elapsed() < APPENDER_RETRY)
                {
                    return None;
                }
                match tokio::time::timeout(APPENDER_WAIT, self.options.connect()).await {
                    Ok(Ok(c)) => c,
                    outcome => {
                        let error = match outcome {
                            Ok(Err(e)) => e.to_string(),
                            _ => "timed out".to_owned(),
                        };
                        tracing::warn!(%error, "a group writer's own PostgreSQL session could not be opened; its appends go through the pool for now");
                        self.failed_at = Some(std::time::Instant::now());
                        return None;
                    }
                }
            }
        };
        self.failed_at = None;
        let (connection, _) = self
            .connection
            .insert((connection, std::time::Instant::now()));
        Some(connection)
    }

    /// Runs `sql` with `values` on the session, or through `db`'s pool when there is none;
    /// returns the rows it affected.
    async fn execute(
        &mut self,
        db: &DatabaseConnection,
        sql: &str,
        values: sea_orm::Values,
    ) -> ApiResult<u64> {
        let queries = self.queries.clone();
        let Some(connection) = self.session().await else {
            let statement = sea_orm::Statement::from_sql_and_values(
                sea_orm::DatabaseBackend::Postgres,
                sql,
                values,
            );
            return Ok(db.execute_raw(statement).await?.rows_affected());
        };
        queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let run = sqlx::query_with(sqlx::AssertSqlSafe(sql), sea_query_sqlx::SqlxValues(values))
            .execute(&mut *connection);
        match tokio::time::timeout(APPENDER_WAIT, run).await {
            Ok(Ok(done)) => {
                if let Some((_, since)) = self.connection.as_mut() {
                    *since = std::time::Instant::now();
                }
                Ok(done.rows_affected())
            }
            outcome => {
                // Its state is unknown, and the statement may have committed: the group is
                // reported failed, and a later group opens another session.
                self.connection = None;
                Err(match outcome {
                    Ok(Err(e)) => ApiError::internal(e, "recording reads in the audit log"),
                    _ => ApiError::Internal(anyhow::anyhow!(
                        "recording reads in the audit log timed out"
                    )),
                })
            }
        }
    }
}

/// One PostgreSQL statement that appends `groups` after `expected` (seq, hash) only if the
/// head is still there, moving the head to the returned (seq, hash) in the same statement:
/// its text (see [`append_text`]) and values. The columns and values are the entity's own, as
/// sea-orm would insert them. `None` for no events or more than [`ONE_STATEMENT_EVENTS`].
fn append_if_head_is(
    expected: &(i64, String),
    groups: &[(&Principal, &[NewEvent<'_>])],
) -> Option<(
    std::borrow::Cow<'static, str>,
    sea_orm::Values,
    (i64, String),
)> {
    use sea_orm::Iterable;
    let sql = append_text(groups.iter().map(|(_, events)| events.len()).sum())?;
    let (rows, moved) = chained(expected.clone(), groups);
    // $1, $2: the new head; $3, $4: the expected one; then each event's columns.
    let mut values: Vec<sea_orm::Value> =
        Vec::with_capacity(4 + rows.len() * audit_event::Column::iter().len());
    values.extend([
        moved.0.into(),
        moved.1.clone().into(),
        expected.0.into(),
        expected.1.clone().into(),
    ]);
    for row in &rows {
        for column in audit_event::Column::iter() {
            values.push(row.get(column).into_value()?);
        }
    }
    Some((sql, sea_orm::Values(values), moved))
}

/// [`append_if_head_is`]'s text for `rows` events: written once for each size up to
/// [`KEPT_TEXTS`] events and kept, written afresh for a larger group (rarer, and its cost spread
/// over more events). It depends only on the number of rows, and writing it for every group
/// (thirteen placeholders an event, each formatted) was 5% of a served query's instructions on
/// PostgreSQL. `None` for no events or more than [`ONE_STATEMENT_EVENTS`].
fn append_text(rows: usize) -> Option<std::borrow::Cow<'static, str>> {
    static KEPT: std::sync::LazyLock<Vec<std::sync::OnceLock<String>>> =
        std::sync::LazyLock::new(|| {
            (0..=KEPT_TEXTS)
                .map(|_| std::sync::OnceLock::new())
                .collect()
        });
    if rows == 0 || rows > ONE_STATEMENT_EVENTS {
        return None;
    }
    Some(match KEPT.get(rows) {
        Some(kept) => std::borrow::Cow::Borrowed(kept.get_or_init(|| write_append_text(rows))),
        None => std::borrow::Cow::Owned(write_append_text(rows)),
    })
}

/// The most events a group can hold for [`append_text`] to keep its text: all kept, the texts
/// take about 180 kB (every size up to 500 would take about 11 MB).
const KEPT_TEXTS: usize = 64;

/// Writes [`append_if_head_is`]'s text for `rows` events.
fn write_append_text(rows: usize) -> String {
    use sea_orm::{IdenStatic, Iterable};
    use std::fmt::Write as _;
    let names: Vec<&str> = audit_event::Column::iter().map(|c| c.as_str()).collect();
    let mut tuples = String::with_capacity(rows * names.len() * 6);
    let mut mark = 4;
    for row in 0..rows {
        tuples.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..names.len() {
            mark += 1;
            let _ = write!(tuples, "{}${mark}", if column == 0 { "" } else { ", " });
        }
        tuples.push(')');
    }
    format!(
        "WITH head AS (UPDATE audit_head SET seq = $1, hash = $2 \
         WHERE id = 1 AND seq = $3 AND hash = $4 RETURNING id) \
         INSERT INTO audit_events ({}) \
         SELECT * FROM (VALUES {tuples}) AS v WHERE EXISTS (SELECT 1 FROM head)",
        names.join(", "),
    )
}

/// `groups`' events chained after `head` (seq, hash): their rows, and the head they leave.
fn chained(
    head: (i64, String),
    groups: &[(&Principal, &[NewEvent<'_>])],
) -> (Vec<audit_event::ActiveModel>, (i64, String)) {
    let (mut seq, mut prev) = head;
    let mut rows = Vec::with_capacity(groups.iter().map(|(_, e)| e.len()).sum());
    for (actor, events) in groups {
        for event in *events {
            seq += 1;
            let (row, hash) = event_row(seq, &prev, actor, event);
            rows.push(row);
            prev = hash;
        }
    }
    (rows, (seq, prev))
}

/// Appends events in order inside `txn`, which must come from [`begin_write`].
pub async fn append_many(
    txn: &DatabaseTransaction,
    actor: &Principal,
    events: &[NewEvent<'_>],
) -> ApiResult<()> {
    append_groups(txn, &[(actor, events)]).await.map(|_| ())
}

/// Appends several actors' events in order inside `txn`, which must come from
/// [`begin_write`]: the group commit of [`ReadRecorder`].
/// Returns the head it left (`None` when there was nothing to append).
async fn append_groups(
    txn: &DatabaseTransaction,
    groups: &[(&Principal, &[NewEvent<'_>])],
) -> ApiResult<Option<(i64, String)>> {
    if groups.iter().all(|(_, events)| events.is_empty()) {
        return Ok(None);
    }
    let head = audit_head::Entity::find_by_id(1)
        .one(txn)
        .await?
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("the audit chain head row is missing"))
        })?;
    let (rows, (seq, prev)) = chained((head.seq, head.hash), groups);
    for chunk in rows.chunks(500) {
        audit_event::Entity::insert_many(chunk.to_vec())
            .exec(txn)
            .await?;
    }
    audit_head::ActiveModel {
        id: Set(1),
        seq: Set(seq),
        hash: Set(prev.clone()),
    }
    .update(txn)
    .await?;
    Ok(Some((seq, prev)))
}

/// The next event's id, time, serialised detail and hash, chained from `prev_hash`.
fn next_event(
    seq: i64,
    prev_hash: &str,
    actor: &Principal,
    event: &NewEvent<'_>,
) -> (String, DateTime<Utc>, String, String) {
    // Microseconds: what PostgreSQL keeps, so the hash still matches once stored.
    let at = Utc::now().trunc_subsecs(6);
    let id = uuid::Uuid::now_v7().to_string();
    let detail = event.detail.to_string();
    let hash = EventFields {
        seq,
        id: &id,
        at,
        actor_sub: &actor.sub,
        actor_role: actor.role.as_str(),
        agency: actor.agency.as_deref(),
        person_id: event.person_id,
        action: event.action,
        detail: &detail,
        purpose: actor.purpose.as_deref(),
        request_id: &actor.request_id,
    }
    .hash(prev_hash);
    (id, at, detail, hash)
}

fn event_row(
    seq: i64,
    prev_hash: &str,
    actor: &Principal,
    event: &NewEvent<'_>,
) -> (audit_event::ActiveModel, String) {
    let (id, at, detail, hash) = next_event(seq, prev_hash, actor, event);
    let row = audit_event::ActiveModel {
        seq: Set(seq),
        id: Set(id),
        at: Set(at),
        actor_sub: Set(actor.sub.clone()),
        actor_role: Set(actor.role.as_str().to_owned()),
        agency: Set(actor.agency.clone()),
        person_id: Set(event.person_id.map(str::to_owned)),
        action: Set(event.action.to_owned()),
        detail: Set(detail),
        purpose: Set(actor.purpose.clone()),
        request_id: Set(actor.request_id.clone()),
        prev_hash: Set(prev_hash.to_owned()),
        hash: Set(hash.clone()),
    };
    (row, hash)
}

/// How often the WAL is copied back into a SQLite store's file (see [`Checkpointer`]).
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// A background checkpoint copies in rounds until a round copies at most this many frames.
const CATCH_UP_FRAMES: i64 = 64;

/// The log's length, in frames, past which the group writer catches up after a background
/// checkpoint (about 128 MB). Below it, the log starts over by itself often enough. A
/// catch-up waits for the log and the file to be synced, and every request waiting for its
/// reads to be recorded waits behind it: under the benchmark's load those syncs took 3 to 24
/// ms. At 8,192 frames (32 MB) the writer caught up about every half second, and one request
/// in a hundred felt it (p99 at a constant 3,000 queries a second 12 to 16 ms in quick runs,
/// against 4 to 5 ms at this length in most runs and 10 ms in one, with catch-ups every three
/// seconds or so). The log file stays at its longest length once grown (SQLite reuses it
/// from the start), so past its first growth a longer log costs disk, not work.
const CATCH_UP_ABOVE: i64 = 32_768;

/// The most rounds of one background checkpoint.
const CHECKPOINT_ROUNDS: usize = 6;

/// Copies a SQLite store's write-ahead log back into its file in the background ("passive"
/// checkpoints: they wait for no reader or writer). Left to SQLite, the commit that crosses
/// 1,000 pages of log does the copying itself, while every request waiting for its reads to be
/// recorded waits behind it; the group writer's own connection therefore copies back only the
/// little a background checkpoint leaves (see `Recorder::write`).
struct Checkpointer {
    path: std::path::PathBuf,
    /// The server's readers, whose views it lets go before each round.
    readers: Option<std::sync::Arc<crate::sqlite_reads::SqliteReads>>,
    running: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Set when a background checkpoint left a log of `catch_up_above` frames or more.
    catch_up_wanted: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The log length that sets `catch_up_wanted`: [`CATCH_UP_ABOVE`], shorter in tests.
    catch_up_above: i64,
    /// The connection the checkpoints run on, kept from one to the next. Opened afresh for
    /// each (four a second), opening it took 10 of the checkpointer's 77 samples in a profile
    /// of the live fan-out.
    connection: std::sync::Arc<std::sync::Mutex<Option<rusqlite::Connection>>>,
}

impl Checkpointer {
    fn new(
        path: std::path::PathBuf,
        readers: Option<std::sync::Arc<crate::sqlite_reads::SqliteReads>>,
    ) -> Self {
        Self {
            path,
            readers,
            running: Default::default(),
            catch_up_wanted: Default::default(),
            catch_up_above: CATCH_UP_ABOVE,
            connection: Default::default(),
        }
    }

    /// Whether a background checkpoint has left a long log since this was last asked: the
    /// group writer should catch up (it asks through its own handle, `catch_up_wanted`).
    #[cfg(test)]
    fn take_catch_up(&self) -> bool {
        self.catch_up_wanted
            .swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// Starts a checkpoint on a blocking thread, unless one is still running. It copies in
    /// rounds, each letting the readers' views go first (so none holds the copy back), until
    /// a round finds at most [`CATCH_UP_FRAMES`] new frames to copy: what the group writer
    /// then copies itself is about that little.
    fn start(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        use std::sync::atomic::Ordering;
        if self.running.swap(true, Ordering::AcqRel) {
            return None;
        }
        let (path, readers, running, catch_up_wanted, catch_up_above, kept) = (
            self.path.clone(),
            self.readers.clone(),
            self.running.clone(),
            self.catch_up_wanted.clone(),
            self.catch_up_above,
            self.connection.clone(),
        );
        Some(tokio::task::spawn_blocking(move || {
            let idle = kept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            let connection = idle.map_or_else(|| crate::sqlite_writes::open(&path), Ok);
            let rounds = |c: &rusqlite::Connection| {
                let mut copied_before = 0;
                let mut log = 0;
                for _ in 0..CHECKPOINT_ROUNDS {
                    if let Some(readers) = &readers {
                        readers.release_views();
                    }
                    let copied: i64;
                    (log, copied) = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get(1)?, r.get(2)?))
                    })?;
                    let fresh = copied - copied_before;
                    copied_before = copied;
                    // Fewer than zero: the log started over meanwhile.
                    if fresh <= CATCH_UP_FRAMES {
                        break;
                    }
                }
                Ok(log)
            };
            match connection.and_then(|c| rounds(&c).map(|log| (c, log))) {
                Ok((c, log)) => {
                    *kept
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(c);
                    let catch_up = log >= catch_up_above;
                    if catch_up {
                        settle_file(&path);
                    }
                    catch_up_wanted.store(catch_up, Ordering::Release);
                }
                // The connection is closed: the next checkpoint opens another.
                Err(e) => tracing::warn!(error = %e, "a background checkpoint failed"),
            }
            running.store(false, Ordering::Release);
        }))
    }
}

/// Writes the store file's pages out to disk (`fdatasync`) here, on the background
/// checkpointer's thread, before it asks the group writer to catch up.
///
/// A passive checkpoint that stops short of the log's end copies pages into the file without
/// syncing it; the catch-up, which reaches the end, syncs the file, and so wrote out every page
/// the background rounds had copied since the last sync, under the write turn, with the
/// requests waiting. Traced at 100,000 people (`perf trace -e fsync`, 3,000 queries a second),
/// each catch-up's sync of the file took 12 to 24 ms, one every 3 seconds; its sync of the log
/// took under 1 ms. Synced here first, the catch-up's sync has only its own few pages to write.
/// A failure only leaves that work to the catch-up, as before.
fn settle_file(path: &std::path::Path) {
    if let Err(e) = std::fs::File::open(path).and_then(|f| f.sync_data()) {
        tracing::warn!(error = %e, "syncing the store file before a catch-up failed");
    }
}

/// Appends every pending request's reads, in arrival order, inside `txn`.
fn append_sqlite(txn: &rusqlite::Connection, group: &[PendingReads]) -> rusqlite::Result<()> {
    // Every statement cached: the group writer runs these for every group.
    let (mut seq, mut prev): (i64, String) = txn
        .prepare_cached("SELECT seq, hash FROM audit_head WHERE id = 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    {
        let mut insert = txn.prepare_cached(
            "INSERT INTO audit_events (seq, id, at, actor_sub, actor_role, agency, person_id, \
             action, detail, purpose, request_id, prev_hash, hash) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )?;
        for pending in group {
            let actor = &pending.actor;
            for (person, what) in &pending.reads {
                seq += 1;
                let event = read_event(person.as_deref(), what);
                let (id, at, detail, hash) = next_event(seq, &prev, actor, &event);
                insert.execute(rusqlite::params![
                    seq,
                    id,
                    // As sqlx writes a DateTime<Utc> to SQLite.
                    at.to_rfc3339_opts(SecondsFormat::AutoSi, false),
                    actor.sub,
                    actor.role.as_str(),
                    actor.agency,
                    event.person_id,
                    event.action,
                    detail,
                    actor.purpose,
                    actor.request_id,
                    prev,
                    hash,
                ])?;
                prev = hash;
            }
        }
    }
    txn.prepare_cached("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1")?
        .execute(rusqlite::params![seq, prev])?;
    Ok(())
}

/// The fields an event's hash covers, in a fixed order.
struct EventFields<'a> {
    seq: i64,
    id: &'a str,
    at: DateTime<Utc>,
    actor_sub: &'a str,
    actor_role: &'a str,
    agency: Option<&'a str>,
    person_id: Option<&'a str>,
    action: &'a str,
    detail: &'a str,
    purpose: Option<&'a str>,
    request_id: &'a str,
}

impl EventFields<'_> {
    /// SHA-256 over the previous hash and every field, each length-prefixed so no two
    /// different events can serialise alike.
    fn hash(&self, prev_hash: &str) -> String {
        let mut hasher = Sha256::new();
        let at = self.at.to_rfc3339_opts(SecondsFormat::Micros, true);
        let seq = self.seq.to_string();
        let parts: [Option<&str>; 12] = [
            Some(prev_hash),
            Some(&seq),
            Some(self.id),
            Some(&at),
            Some(self.actor_sub),
            Some(self.actor_role),
            self.agency,
            self.person_id,
            Some(self.action),
            Some(self.detail),
            self.purpose,
            Some(self.request_id),
        ];
        for part in parts {
            match part {
                Some(text) => {
                    hasher.update(b"s");
                    hasher.update((text.len() as u64).to_be_bytes());
                    hasher.update(text.as_bytes());
                }
                None => hasher.update(b"n"),
            }
        }
        hex::encode(hasher.finalize())
    }
}

/// The outcome of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainStatus {
    /// Every event links to the one before and hashes to what it says.
    Holds {
        /// How many events were checked.
        events: i64,
        /// The head hash.
        head_hash: String,
    },
    /// The first event (by sequence) where the chain breaks, and why.
    Broken {
        /// The sequence number of the first bad event (or where one is missing).
        seq: i64,
        /// What is wrong.
        reason: String,
    },
}

/// Walks the whole chain in order and checks every link, and that the head row agrees.
pub async fn verify(db: &impl ConnectionTrait) -> ApiResult<ChainStatus> {
    let mut prev = GENESIS_HASH.to_owned();
    let mut expected_seq = 1;
    // Page through the log by sequence, so memory stays flat however long it grows.
    loop {
        let page = audit_event::Entity::find()
            .filter(audit_event::Column::Seq.gte(expected_seq))
            .order_by_asc(audit_event::Column::Seq)
            .limit(VERIFY_PAGE)
            .all(db)
            .await?;
        let done = (page.len() as u64) < VERIFY_PAGE;
        for event in &page {
            if event.seq != expected_seq {
                return Ok(ChainStatus::Broken {
                    seq: expected_seq,
                    reason: format!(
                        "event {expected_seq} is missing (next present is {})",
                        event.seq
                    ),
                });
            }
            if event.prev_hash != prev {
                return Ok(ChainStatus::Broken {
                    seq: event.seq,
                    reason: "its previous-hash does not match the event before it".into(),
                });
            }
            let fields = EventFields {
                seq: event.seq,
                id: &event.id,
                at: event.at,
                actor_sub: &event.actor_sub,
                actor_role: &event.actor_role,
                agency: event.agency.as_deref(),
                person_id: event.person_id.as_deref(),
                action: &event.action,
                detail: &event.detail,
                purpose: event.purpose.as_deref(),
                request_id: &event.request_id,
            };
            let hash = fields.hash(&prev);
            if hash != event.hash {
                return Ok(ChainStatus::Broken {
                    seq: event.seq,
                    reason: "its contents do not match its hash (edited)".into(),
                });
            }
            prev = hash;
            expected_seq += 1;
        }
        if done {
            break;
        }
    }
    let head = audit_head::Entity::find_by_id(1)
        .one(db)
        .await?
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("the audit chain head row is missing"))
        })?;
    let count = expected_seq - 1;
    if head.seq != count || head.hash != prev {
        return Ok(ChainStatus::Broken {
            seq: count + 1,
            reason: format!(
                "the chain head records {} events but {} are present (truncated)",
                head.seq, count
            ),
        });
    }
    Ok(ChainStatus::Holds {
        events: count,
        head_hash: prev,
    })
}

/// A signed record of the chain head, written outside the database, so truncating the log or
/// rewriting it wholesale is caught.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Anchor {
    /// The head's sequence number.
    pub seq: i64,
    /// The head's hash.
    pub hash: String,
    /// When it was anchored (RFC 3339).
    pub at: String,
    /// HMAC-SHA256 over `seq:hash:at`, hex.
    pub signature: String,
}

fn sign(key: &secrecy::SecretString, seq: i64, hash: &str, at: &str) -> ApiResult<String> {
    use hmac::Mac;
    use secrecy::ExposeSecret;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes())
        .map_err(|e| ApiError::internal(anyhow::anyhow!("{e}"), "the anchor key cannot be used"))?;
    mac.update(format!("{seq}:{hash}:{at}").as_bytes());
    Ok(hex::encode(mac.finalize().into_bytes()))
}

/// Signs the current chain head and writes it to `dir` as `anchor-<seq>.json`.
pub async fn anchor(
    db: &impl ConnectionTrait,
    dir: &std::path::Path,
    key: &secrecy::SecretString,
) -> ApiResult<Anchor> {
    let head = audit_head::Entity::find_by_id(1)
        .one(db)
        .await?
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("the audit chain head row is missing"))
        })?;
    let at = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let anchor = Anchor {
        seq: head.seq,
        signature: sign(key, head.seq, &head.hash, &at)?,
        hash: head.hash,
        at,
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| ApiError::internal(e, "creating the anchor directory"))?;
    let json = serde_json::to_string_pretty(&anchor)
        .map_err(|e| ApiError::internal(e, "serialising an anchor"))?;
    let path = dir.join(format!("anchor-{:012}.json", anchor.seq));
    std::fs::write(&path, json).map_err(|e| ApiError::internal(e, "writing an anchor"))?;
    Ok(anchor)
}

/// Reads every anchor in `dir`, checking each signature.
pub fn read_anchors(
    dir: &std::path::Path,
    key: &secrecy::SecretString,
) -> Result<Vec<Anchor>, String> {
    let mut anchors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(anchors),
        Err(e) => return Err(format!("the anchor directory cannot be read: {e}")),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("anchor-") && name.ends_with(".json")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).map_err(|e| format!("{name}: {e}"))?;
        let anchor: Anchor =
            serde_json::from_str(&text).map_err(|e| format!("{name} is not an anchor: {e}"))?;
        let expected =
            sign(key, anchor.seq, &anchor.hash, &anchor.at).map_err(|e| e.to_string())?;
        if expected != anchor.signature {
            return Err(format!(
                "{name} has a bad signature: the anchor itself was altered"
            ));
        }
        anchors.push(anchor);
    }
    anchors.sort_by_key(|a| a.seq);
    Ok(anchors)
}

/// Checks the chain, then that every anchored head is still in it unchanged.
pub async fn verify_with_anchors(
    db: &impl ConnectionTrait,
    dir: &std::path::Path,
    key: &secrecy::SecretString,
) -> ApiResult<ChainStatus> {
    let status = verify(db).await?;
    let ChainStatus::Holds { events, .. } = &status else {
        return Ok(status);
    };
    let anchors = match read_anchors(dir, key) {
        Ok(anchors) => anchors,
        Err(reason) => return Ok(ChainStatus::Broken { seq: 0, reason }),
    };
    for anchor in anchors {
        if anchor.seq == 0 {
            continue;
        }
        if anchor.seq > *events {
            return Ok(ChainStatus::Broken {
                seq: *events + 1,
                reason: format!(
                    "the log ends at event {events} but an anchor of {} records event {}: truncated",
                    anchor.at, anchor.seq
                ),
            });
        }
        let event = audit_event::Entity::find_by_id(anchor.seq)
            .one(db)
            .await?
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("an anchored event vanished")))?;
        if event.hash != anchor.hash {
            return Ok(ChainStatus::Broken {
                seq: anchor.seq,
                reason: format!(
                    "event {} no longer has the hash anchored at {}: the chain was rewritten",
                    anchor.seq, anchor.at
                ),
            });
        }
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::Checkpointer;
    use crate::sqlite_writes::open as open_writer;

    /// The audit writer's own session names itself and sets nothing, so it plans as
    /// PostgreSQL does by default, where the pool's sessions force a plan per execution.
    #[test]
    fn the_appender_keeps_postgresql_default_planning() {
        use std::str::FromStr;
        let queries = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        assert!(super::PgAppender::open("sqlite://audit.db", queries.clone()).is_none());
        let url = "postgres://hub@127.0.0.1:5432/tributary";
        let appender = super::PgAppender::open(url, queries).expect("a PostgreSQL URL");
        assert_eq!(
            appender.options.get_application_name(),
            Some(super::APPENDER_NAME)
        );
        assert_eq!(appender.options.get_options(), None);
        let pool = crate::db::tune_postgres(super::PgConnectOptions::from_str(url).unwrap());
        assert!(
            pool.get_options()
                .is_some_and(|o| o.contains("force_custom_plan"))
        );
    }

    /// The kept text of the one-statement append binds every value once, in order: the head's
    /// four, then each event's columns (`append_if_head_is` pushes them in that order), with no
    /// text for no events or more than one statement takes.
    #[test]
    fn the_kept_append_text_numbers_each_events_columns_in_order() {
        use sea_orm::{IdenStatic, Iterable};
        let columns: Vec<&str> = entities::audit_event::Column::iter()
            .map(|c| c.as_str())
            .collect();
        assert_eq!(super::append_text(0), None);
        assert_eq!(super::append_text(super::ONE_STATEMENT_EVENTS + 1), None);
        for rows in [
            1,
            2,
            7,
            super::KEPT_TEXTS,
            super::KEPT_TEXTS + 1,
            super::ONE_STATEMENT_EVENTS,
        ] {
            let text = super::append_text(rows).expect("a text");
            // Up to KEPT_TEXTS events the same text is kept, not written again; above, each
            // group writes its own.
            let kept = matches!(text, std::borrow::Cow::Borrowed(_));
            assert_eq!(kept, rows <= super::KEPT_TEXTS, "{rows} events");
            if kept {
                assert!(std::ptr::eq(&*text, &*super::append_text(rows).unwrap()));
            }
            assert!(text.contains(&format!(
                "INSERT INTO audit_events ({})",
                columns.join(", ")
            )));
            let (_, values) = text.split_once("VALUES ").expect("a VALUES list");
            let (values, _) = values.split_once(") AS v").expect("its end");
            let expected: Vec<String> = (0..rows)
                .map(|row| {
                    let marks: Vec<String> = (0..columns.len())
                        .map(|c| format!("${}", 5 + row * columns.len() + c))
                        .collect();
                    format!("({})", marks.join(", "))
                })
                .collect();
            assert_eq!(values, expected.join(", "));
        }
    }
    /// The group writer's connection leaves the log alone, and the checkpointer copies it back
    /// into the file: the file grows only once the checkpointer has run.
    #[tokio::test]
    async fn the_group_writer_never_checkpoints_and_the_checkpointer_does() {
        let (_dir, path) = crate::sqlite_writes::test_store("CREATE TABLE t (x TEXT)");
        let writer = open_writer(&path).unwrap();
        let file_size = || std::fs::metadata(&path).unwrap().len();
        let before = file_size();
        // Far more than SQLite's automatic threshold of 1,000 pages of log.
        let row = "x".repeat(3000);
        for _ in 0..1500 {
            writer.execute("INSERT INTO t VALUES (?1)", [&row]).unwrap();
        }
        assert_eq!(file_size(), before, "the writer copied the log back itself");

        let mut checkpointer = Checkpointer::new(path.clone(), None);
        // The catch-up length is far longer; what matters here is either side of it.
        checkpointer.catch_up_above = 8192;
        checkpointer.start().unwrap().await.unwrap();
        assert!(
            file_size() > before + 1500 * 3000,
            "the checkpointer copied the log back"
        );
        assert!(
            !checkpointer.take_catch_up(),
            "a log this short starts over by itself: the writer need not catch up"
        );
        assert!(
            checkpointer.connection.lock().unwrap().is_some(),
            "the checkpoint's connection is kept for the next"
        );

        // A row a page, with the pages above it: well past the catch-up length.
        for _ in 0..4500 {
            writer.execute("INSERT INTO t VALUES (?1)", [&row]).unwrap();
        }
        checkpointer.start().unwrap().await.unwrap();
        assert!(
            checkpointer.take_catch_up(),
            "the writer is told to catch up"
        );
        assert!(!checkpointer.take_catch_up(), "once");
    }

    /// A migrated SQLite file store, its readers (with their inline writer) and a recorder
    /// over them.
    async fn sqlite_recorder() -> (
        tempfile::TempDir,
        sea_orm::DatabaseConnection,
        super::ReadRecorder,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/hub.db?mode=rwc", dir.path().display());
        let settings = crate::config::DatabaseSettings {
            url: url.clone(),
            max_connections: 2,
        };
        let db = crate::db::connect_server(&settings).await.unwrap();
        crate::db::migrate(&db).await.unwrap();
        let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let local =
            std::sync::Arc::new(crate::sqlite_reads::SqliteReads::open(&url, counter).unwrap());
        let recorder = super::ReadRecorder::start(db.clone(), Some(local), None);
        (dir, db, recorder)
    }

    fn reader(request: usize) -> crate::auth::Principal {
        crate::auth::Principal {
            sub: "auditor-1".into(),
            role: crate::auth::Role::Auditor,
            acts_for: Vec::new(),
            agency: None,
            purpose: Some("test".into()),
            request_id: format!("request-{request}"),
        }
    }

    /// Requests on several threads at once each get their reads committed, in one chain
    /// that holds, each request's reads together and in its order, whichever request's
    /// thread wrote their group.
    #[test]
    fn concurrent_requests_reads_are_all_recorded_in_one_chain() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (_dir, db, recorder) = sqlite_recorder().await;
            let requests = 300;
            let tasks: Vec<_> = (0..requests)
                .map(|r| {
                    let recorder = recorder.clone();
                    tokio::spawn(async move {
                        let reads = vec![
                            (Some(format!("person-{r}")), "person.read"),
                            (Some(format!("person-{r}")), "budget.read"),
                        ];
                        recorder.record(&reader(r), reads).await
                    })
                })
                .collect();
            for task in tasks {
                tokio::time::timeout(std::time::Duration::from_secs(60), task)
                    .await
                    .expect("a request's reads were never recorded")
                    .unwrap()
                    .unwrap();
            }
            match super::verify(&db).await.unwrap() {
                super::ChainStatus::Holds { events, .. } => {
                    assert_eq!(events, 2 * requests as i64)
                }
                broken => panic!("the chain broke: {broken:?}"),
            }
            use sea_orm::{EntityTrait, QueryOrder};
            let events = entities::audit_event::Entity::find()
                .order_by_asc(entities::audit_event::Column::Seq)
                .all(&db)
                .await
                .unwrap();
            for pair in events.chunks(2) {
                assert_eq!(
                    pair[0].request_id, pair[1].request_id,
                    "a request's reads were split"
                );
                assert_eq!(
                    (pair[0].action.as_str(), pair[1].action.as_str()),
                    ("person.read", "budget.read")
                );
            }
        });
    }

    /// While another process holds the store's write lock, a group waits for it off the
    /// requests' thread: the runtime's one thread goes on (here, to release that lock), and
    /// the reads are committed once it is free.
    #[test]
    fn a_group_waits_out_another_process_lock_off_the_requests_thread() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (dir, db, recorder) = sqlite_recorder().await;
            let other = rusqlite::Connection::open(dir.path().join("hub.db")).unwrap();
            other.execute_batch("BEGIN IMMEDIATE").unwrap();
            let recording = {
                let recorder = recorder.clone();
                tokio::spawn(async move {
                    recorder
                        .record(&reader(1), vec![(Some("person-1".into()), "person.read")])
                        .await
                })
            };
            // This thread runs the writer until it finds the lock taken and leaves the group
            // to the pool.
            while recorder.waited_out() == 0 && !recording.is_finished() {
                tokio::task::yield_now().await;
            }
            assert!(!recording.is_finished(), "recorded under another's lock");
            assert_eq!(recorder.waited_out(), 1);
            other.execute_batch("COMMIT").unwrap();
            recording.await.unwrap().unwrap();
            match super::verify(&db).await.unwrap() {
                super::ChainStatus::Holds { events, .. } => assert_eq!(events, 1),
                broken => panic!("the chain broke: {broken:?}"),
            }
        });
    }

    /// A writer task dropped before it ever ran (its runtime shut down first) lets go of the
    /// writing: the request it was spawned for is told the writer stopped, and the next
    /// request, on another runtime, starts a writer of its own and is recorded.
    #[test]
    fn a_writer_dropped_before_it_ran_lets_the_next_request_write() {
        use futures::FutureExt;
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let first = runtime();
        let (dir, _, recorder) = first.block_on(sqlite_recorder());
        let read = || vec![(Some("person-1".to_owned()), "person.read")];
        first.block_on(async {
            // Polled once: the reads wait, and the writer task is spawned but not yet run.
            assert!(recorder.record(&reader(1), read()).now_or_never().is_none());
            assert!(recorder.shared.state().writing);
        });
        drop(first);
        assert!(
            !recorder.shared.state().writing,
            "the dropped writer kept its hold"
        );
        let second = runtime();
        second.block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(60),
                recorder.record(&reader(2), read()),
            )
            .await
            .expect("the next request's reads were never recorded")
            .unwrap();
            // The first runtime's pool went with it: a new one, on this runtime.
            let settings = crate::config::DatabaseSettings {
                url: format!("sqlite://{}/hub.db?mode=rwc", dir.path().display()),
                max_connections: 1,
            };
            let db = crate::db::connect_server(&settings).await.unwrap();
            match super::verify(&db).await.unwrap() {
                super::ChainStatus::Holds { events, .. } => assert_eq!(events, 1),
                broken => panic!("the chain broke: {broken:?}"),
            }
        });
    }
}
