//! A PostgreSQL view's store reads in one statement.
//!
//! A combined budget read one statement at a time is a chain of round trips: the snapshots and
//! the current extracts, then the extract's rows, then the plan items, then their shares. Each
//! round trip costs the hub and the server a wake-up and a few system calls, and on a 2-core
//! machine those, not the reads, were most of the served path's CPU on PostgreSQL. So before a
//! view asks, its loaders ask PostgreSQL once for everything the view can ask about (see
//! `StoreReader::prepare`): one prepared statement whose parameters are the (connector, subject
//! key) pairs and person ids of every view on the page, answering with each table's rows as a
//! JSON array, built by the server, and the stored snapshots in rows of their own (see
//! [`VIEWS`]).
//!
//! What a [`Bundle`] holds is exactly what the single reads would return, including absence: a
//! pair it was asked about with no snapshot has none. Anything it was not asked about is left
//! to the single reads. SQLite reads inline (`sqlite_reads`), where a round trip is a function
//! call, so it has no bundle.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use connectors::PersonRecords;
use entities::{
    bulk_extract, bulk_record, funding_share, person, person_identifier, plan_item,
    rejected_record, upstream_snapshot,
};
use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, Statement};

use crate::budget::assemble::SourceMeta;
use crate::coalesce::Answer;
use crate::error::{ApiError, ApiResult};
use crate::pg_reads::PgReads;
use crate::services::persons::PersonRecord;
use crate::services::plan::{self, Item};
use crate::services::sources::usable_snapshot;

/// `$1`: the pairs, as a JSON array of `{"connector", "subject_key"}`; `$2`: the person ids,
/// as a JSON array of strings. Rows come in the order the single reads give them.
///
/// Each table is read by index, one lookup per pair or person (`LATERAL`, kept apart by
/// `OFFSET 0` so the planner cannot merge it into a join): the planner cannot see how many
/// pairs a JSON parameter holds, guesses 100, and with that guess chose to scan whole tables.
const BUNDLE_CTES: &str = r#"
WITH want AS (
    SELECT DISTINCT w.connector, w.subject_key
    FROM json_to_recordset($1::json) AS w(connector text, subject_key text)
), people AS (
    SELECT DISTINCT p.id FROM json_array_elements_text($2::json) AS p(id)
), "#;

/// What both statements read once `want` (the pairs) and `people` (the person ids) are known.
/// One row (`kind` 'b') holds each table's rows as a JSON array, built by the server; `{extra}`
/// is where a statement adds JSON columns of its own. The stored snapshots come in rows of
/// their own (`kind` 's'), in their own columns: a snapshot's records are JSON text, which in a
/// JSON array the server would escape and the hub unescape before reading it as JSON. They are
/// the largest values a view reads: in rows of their own, the hub's instructions a served
/// PostgreSQL query fell 5% (callgrind), and `escape_json` had been the largest function in
/// the reader's profile on the server.
const VIEWS: &str = r#"
extracts AS (
    SELECT e.* FROM bulk_extracts e
    WHERE e.current AND e.connector IN (SELECT connector FROM want)
), items AS (
    SELECT i.* FROM people p CROSS JOIN LATERAL (
        SELECT * FROM plan_items i WHERE i.person_id = p.id OFFSET 0
    ) i
)
SELECT 'b' AS kind, {extra}
    (SELECT coalesce(json_agg(e), '[]') FROM extracts e)::text AS extracts,
    (SELECT coalesce(json_agg(r ORDER BY r.id), '[]')
        FROM extracts e JOIN want w ON w.connector = e.connector CROSS JOIN LATERAL (
            SELECT * FROM bulk_records r
            WHERE r.extract_id = e.id AND r.subject_key = w.subject_key OFFSET 0
        ) r)::text AS bulk_rows,
    (SELECT coalesce(json_agg(x ORDER BY x.id), '[]')
        FROM extracts e JOIN want w ON w.connector = e.connector AND e.rejected_count > 0
        CROSS JOIN LATERAL (
            SELECT * FROM rejected_records x
            WHERE x.connector = w.connector AND x.subject_key = w.subject_key OFFSET 0
        ) x)::text AS rejected,
    (SELECT coalesce(json_agg(i ORDER BY i.id), '[]') FROM items i)::text AS items,
    (SELECT coalesce(json_agg(f ORDER BY f.position), '[]') FROM items i CROSS JOIN LATERAL (
        SELECT * FROM funding_shares f WHERE f.plan_item_id = i.id OFFSET 0
    ) f)::text AS shares,
    NULL::varchar AS id, NULL::varchar AS connector, NULL::varchar AS subject_key,
    NULL::varchar AS version, NULL::varchar AS content_hash, NULL::text AS records,
    NULL::timestamptz AS fetched_at
UNION ALL
SELECT 's', {nulls}
    s.id, s.connector, s.subject_key, s.version, s.content_hash, s.records, s.fetched_at
FROM want w CROSS JOIN LATERAL (
    SELECT * FROM upstream_snapshots s
    WHERE s.connector = w.connector AND s.subject_key = w.subject_key OFFSET 0
) s
"#;

/// The JSON columns of [`VIEWS`]'s first row, besides a statement's own.
const VIEWS_JSON_COLUMNS: usize = 5;

/// [`VIEWS`] with a statement's own JSON columns: `extra`, `extra_columns` of them, each
/// followed by a comma.
fn views(extra: &str, extra_columns: usize) -> String {
    VIEWS.replace("{extra}", extra).replace(
        "{nulls}",
        &"NULL, ".repeat(extra_columns + VIEWS_JSON_COLUMNS),
    )
}

/// The views' statement for pairs and people given.
static BUNDLE_SQL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{BUNDLE_CTES}{}", views("", 0)));

/// People by hub id with their identifiers, and everything their views can ask, in one
/// statement (see [`read_people_views`]), for connectors whose lookup schemes are `lookups`:
/// each connector id, a scheme it looks people up by, and the scheme's rank in the connector's
/// order (see `lookups`, which reads them from a registry). `$1`: the person ids, as a JSON
/// array of strings.
///
/// The lookups are written into the statement as a list of values, not sent as a parameter:
/// they are the same for every statement a server asks, and a JSON parameter was read afresh
/// by every execution (`json_to_recordset`), and planned blind (the planner guessed 100 rows;
/// it now sees the list). Measured with `pgbench` on the benchmark's store (100,000 people), a
/// statement for one to three people took about 25 to 35 µs less of the server's CPU this
/// way, of 300 to 450; in three paired quick runs of the benchmark (served from snapshots, 32
/// connections), where statements are merged and the audit log's writes share the server,
/// PostgreSQL's CPU a query fell by 2 to 3.5 µs (about 2%), throughput the same within the
/// runs' noise. Connector ids are lower-case letters, digits, '-' and '_' (checked when the
/// configuration is read) and schemes are the hub's own names; each is still written as an
/// escape string literal (`E'...'`, its backslashes and quotes doubled), which reads the same
/// whatever the server's `standard_conforming_strings`.
///
/// The pairs are derived here from the people's identifiers as `Connector::subject` picks
/// them: for each person and connector, the subject key (`SCHEME:value`) of the identifier in
/// the connector's first scheme (by `rank`) the person holds, the lowest value (bytewise, as
/// the person's identifiers are sorted) if they hold several. Should a view still ask about a
/// pair not derived here, it reads it for itself (`Loaders::prepare`).
pub fn people_views_sql(lookups: &[(&str, &str, usize)]) -> String {
    let quote = |text: &str| format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"));
    let values = if lookups.is_empty() {
        "(SELECT NULL::text, NULL::text, NULL::int WHERE false)".to_owned()
    } else {
        let rows: Vec<String> = lookups
            .iter()
            .map(|(connector, scheme, rank)| {
                format!("({}, {}, {rank})", quote(connector), quote(scheme))
            })
            .collect();
        format!("(VALUES {})", rows.join(", "))
    };
    format!(
        r#"
WITH people AS (
    SELECT p.* FROM (
        SELECT DISTINCT w.id FROM json_array_elements_text($1::json) AS w(id)
    ) w CROSS JOIN LATERAL (SELECT * FROM persons p WHERE p.id = w.id OFFSET 0) p
), identifiers AS (
    SELECT i.* FROM people p CROSS JOIN LATERAL (
        SELECT * FROM person_identifiers i WHERE i.person_id = p.id OFFSET 0
    ) i
), want AS (
    SELECT DISTINCT ON (i.person_id, l.connector) l.connector, i.scheme || ':' || i.value AS subject_key
    FROM identifiers i
    JOIN {values} AS l(connector, scheme, rank)
        ON l.scheme = i.scheme
    ORDER BY i.person_id, l.connector, l.rank, i.value COLLATE "C"
), {}"#,
        views(
            "(SELECT coalesce(json_agg(p), '[]') FROM people p)::text AS persons,
    (SELECT coalesce(json_agg(i), '[]') FROM identifiers i)::text AS identifiers,
    (SELECT coalesce(json_agg(w), '[]') FROM want w)::text AS pairs,",
            3,
        )
    )
}

/// [`people_views_sql`] for `registry`'s connectors.
pub fn people_views_sql_for(registry: &connectors::Registry) -> String {
    let lookups = lookups(registry);
    let borrowed: Vec<(&str, &str, usize)> = lookups
        .iter()
        .map(|(connector, scheme, rank)| (connector.as_str(), *scheme, *rank))
        .collect();
    people_views_sql(&borrowed)
}

/// Everything the views of one page can ask the store, read at once.
#[derive(Debug, Default)]
pub struct Bundle {
    pairs: HashSet<(String, String)>,
    people: HashSet<String>,
    snapshots: HashMap<(String, String), (PersonRecords, SourceMeta)>,
    extracts: HashMap<String, bulk_extract::Model>,
    bulk_rows: HashMap<(String, String), Vec<bulk_record::Model>>,
    rejected: HashMap<(String, String), Vec<rejected_record::Model>>,
    plan_items: HashMap<String, Vec<Item>>,
}

fn column<T: serde::de::DeserializeOwned>(
    row: &sea_orm::QueryResult,
    name: &str,
) -> ApiResult<Vec<T>> {
    let text: String = row.try_get("", name)?;
    serde_json::from_str(&text).map_err(|e| ApiError::internal(e, "reading a view's rows"))
}

/// What one request's views ask: (connector, subject key) pairs and person ids.
pub type Asked = (Vec<(String, String)>, Vec<String>);

/// As [`read`], merged with the reads of other requests in flight (see `coalesce`): the
/// answer covers what every merged request asked, and a [`Bundle`] answers each read from
/// what it was asked, so each request finds its own views' rows in it.
pub async fn read_shared(
    reads: &Arc<PgReads>,
    pairs: Vec<(String, String)>,
    people: Vec<String>,
) -> Answer<Bundle> {
    let on = reads.clone();
    reads
        .bundles
        .read((pairs, people), move |asked: Vec<Asked>| {
            let on = on.clone();
            async move {
                let mut pairs: Vec<(String, String)> = Vec::new();
                let mut people: Vec<String> = Vec::new();
                for (p, q) in asked {
                    pairs.extend(p);
                    people.extend(q);
                }
                pairs.sort_unstable();
                pairs.dedup();
                people.sort_unstable();
                people.dedup();
                read(&*on, &pairs, &people).await
            }
        })
        .await
}

/// Reads, in one statement, what views of `people` asking about `pairs` can ask.
pub async fn read(
    db: &impl ConnectionTrait,
    pairs: &[(String, String)],
    people: &[String],
) -> ApiResult<Bundle> {
    #[derive(serde::Serialize)]
    struct Want<'a> {
        connector: &'a str,
        subject_key: &'a str,
    }
    let want: Vec<Want<'_>> = pairs
        .iter()
        .map(|(connector, subject_key)| Want {
            connector,
            subject_key,
        })
        .collect();
    let statement = Statement::from_sql_and_values(
        DbBackend::Postgres,
        BUNDLE_SQL.as_str(),
        [json_text(&want)?.into(), json_text(people)?.into()],
    );
    let rows = db.query_all_raw(statement).await?;
    let (json, snapshots) = split(&rows)?;
    fill(
        Bundle {
            pairs: pairs.iter().cloned().collect(),
            people: people.iter().cloned().collect(),
            ..Bundle::default()
        },
        json,
        &snapshots,
    )
}

/// A views' statement's rows (see [`VIEWS`]), each told apart by its `kind` once: the row
/// holding the JSON columns, and the stored snapshots' rows.
fn split(
    rows: &[sea_orm::QueryResult],
) -> ApiResult<(&sea_orm::QueryResult, Vec<&sea_orm::QueryResult>)> {
    let mut json = None;
    let mut snapshots = Vec::with_capacity(rows.len());
    for row in rows {
        if row.try_get::<String>("", "kind")? == "s" {
            snapshots.push(row);
        } else {
            json = Some(row);
        }
    }
    let json =
        json.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the views' read returned no row")))?;
    Ok((json, snapshots))
}

/// `bundle` (its pairs and people set) with what a views' statement answered for them: its
/// JSON row and its snapshots' rows (see [`split`]).
fn fill(
    mut bundle: Bundle,
    row: &sea_orm::QueryResult,
    snapshots: &[&sea_orm::QueryResult],
) -> ApiResult<Bundle> {
    for &snapshot_row in snapshots {
        let snapshot = upstream_snapshot::Model::from_query_result(snapshot_row, "")?;
        let key = (snapshot.connector.clone(), snapshot.subject_key.clone());
        if let Some(snapshot) = usable_snapshot(snapshot) {
            bundle.snapshots.insert(key, snapshot);
        }
    }
    for extract in column::<bulk_extract::Model>(row, "extracts")? {
        bundle.extracts.insert(extract.connector.clone(), extract);
    }
    for record in column::<bulk_record::Model>(row, "bulk_rows")? {
        bundle
            .bulk_rows
            .entry((record.extract_id.clone(), record.subject_key.clone()))
            .or_default()
            .push(record);
    }
    for rejected in column::<rejected_record::Model>(row, "rejected")? {
        if let Some(subject) = rejected.subject_key.clone() {
            bundle
                .rejected
                .entry((rejected.connector.clone(), subject))
                .or_default()
                .push(rejected);
        }
    }
    let items = column::<plan_item::Model>(row, "items")?;
    let shares = column::<funding_share::Model>(row, "shares")?;
    bundle.plan_items = plan::group_by_person(items, shares)?;
    Ok(bundle)
}

/// `value` as a statement's JSON parameter.
fn json_text<T: serde::Serialize + ?Sized>(value: &T) -> ApiResult<String> {
    serde_json::to_string(value).map_err(|e| ApiError::internal(e, "writing a read's parameters"))
}

/// The lookup schemes of every connector whose snapshots a view reads before it asks, as
/// [`people_views_sql`] takes them: each connector id, scheme and the scheme's rank in the
/// connector's order. A partner asked on every view has its snapshot read only if it fails
/// (see `sources::gather`).
fn lookups(registry: &connectors::Registry) -> Vec<(String, &'static str, usize)> {
    registry
        .all()
        .filter(|c| !crate::services::sources::always_asked(c.as_ref()))
        .flat_map(|c| {
            let connector = c.settings().id.as_str().to_owned();
            c.schemes()
                .into_iter()
                .enumerate()
                .map(move |(rank, s)| (connector.clone(), s.as_str(), rank))
        })
        .collect()
}

/// People found among `ids` and their views' rows: what [`read_people_views`] answers.
#[derive(Debug)]
pub struct PeopleViews {
    /// The people found, by hub id.
    pub people: HashMap<String, PersonRecord>,
    /// Everything their views can ask (see [`people_views_sql`]); `None` when a row of it
    /// could not be used.
    pub bundle: Option<Arc<Bundle>>,
}

/// People by hub id with their identifiers, and everything their views can ask about, in
/// one statement (`sql`: see [`people_views_sql`]): a served budget's person read and its
/// views' read in one round trip, where they were two, one after the other.
pub async fn read_people_views(
    db: &impl ConnectionTrait,
    ids: &[String],
    sql: &str,
) -> ApiResult<PeopleViews> {
    let statement =
        Statement::from_sql_and_values(DbBackend::Postgres, sql, [json_text(ids)?.into()]);
    let answer = db.query_all_raw(statement).await?;
    let (row, snapshots) = split(&answer)?;
    let rows = column::<person::Model>(row, "persons")?;
    let identifiers = column::<person_identifier::Model>(row, "identifiers")?;
    #[derive(serde::Deserialize)]
    struct Pair {
        connector: String,
        subject_key: String,
    }
    let pairs = column::<Pair>(row, "pairs")?
        .into_iter()
        .map(|p| (p.connector, p.subject_key))
        .collect();
    // Rows a view cannot use (a JSON column that does not decode) leave the views to read for
    // themselves, as they would have without this. A stored snapshot that does not decode is
    // read as none, here as by the views' own reads (`sources::usable_snapshot`).
    let bundle = fill(
        Bundle {
            pairs,
            people: rows.iter().map(|p| p.id.clone()).collect(),
            ..Bundle::default()
        },
        row,
        &snapshots,
    )
    .inspect_err(|e| tracing::warn!(error = %e, "a view's rows read with its person are unusable"))
    .ok()
    .map(Arc::new);
    Ok(PeopleViews {
        people: crate::services::persons::records(rows, identifiers)?,
        bundle,
    })
}

impl Bundle {
    /// Whether this bundle was asked about the person and every one of `pairs`, so a view of
    /// theirs asking about those pairs needs no read of its own.
    pub fn covers(&self, person_id: &str, pairs: &[(String, String)]) -> bool {
        self.people.contains(person_id) && pairs.iter().all(|p| self.pairs.contains(p))
    }

    /// The stored snapshot, if this bundle was asked about the pair.
    pub fn snapshot(
        &self,
        connector: &str,
        subject_key: &str,
    ) -> Option<Option<(PersonRecords, SourceMeta)>> {
        let key = (connector.to_owned(), subject_key.to_owned());
        self.pairs
            .contains(&key)
            .then(|| self.snapshots.get(&key).cloned())
    }

    /// The connector's current extract, if this bundle was asked about the connector.
    pub fn current_extract(&self, connector: &str) -> Option<Option<bulk_extract::Model>> {
        self.pairs
            .iter()
            .any(|(c, _)| c == connector)
            .then(|| self.extracts.get(connector).cloned())
    }

    /// One subject's rows of a current extract, if this bundle was asked about them.
    pub fn bulk_rows(
        &self,
        extract_id: &str,
        subject_key: &str,
    ) -> Option<Vec<bulk_record::Model>> {
        let extract = self.extracts.values().find(|e| e.id == extract_id)?;
        let key = (extract.connector.clone(), subject_key.to_owned());
        self.pairs.contains(&key).then(|| {
            self.bulk_rows
                .get(&(extract_id.to_owned(), subject_key.to_owned()))
                .cloned()
                .unwrap_or_default()
        })
    }

    /// One subject's rejected rows of a connector, if this bundle read them: it reads them for
    /// a pair whose connector's current extract rejected some.
    pub fn rejected(
        &self,
        connector: &str,
        subject_key: &str,
    ) -> Option<Vec<rejected_record::Model>> {
        let key = (connector.to_owned(), subject_key.to_owned());
        let read = self.pairs.contains(&key)
            && self
                .extracts
                .get(connector)
                .is_some_and(|e| e.rejected_count > 0);
        read.then(|| self.rejected.get(&key).cloned().unwrap_or_default())
    }

    /// A person's plan items, if this bundle was asked about the person.
    pub fn plan_items(&self, person_id: &str) -> Option<Vec<Item>> {
        self.people
            .contains(person_id)
            .then(|| self.plan_items.get(person_id).cloned().unwrap_or_default())
    }
}
