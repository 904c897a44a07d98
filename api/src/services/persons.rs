//! The person registry: one hub person carrying the identifiers each fund knows them by.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use connectors::IdentifierScheme;
use entities::{person, person_identifier};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr,
    EntityTrait, ModelTrait, QueryFilter, QueryOrder, QuerySelect, SqlErr,
};
use serde_json::json;

use crate::audit::{self, NewEvent};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};

/// A registered person with their identifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonRecord {
    /// The hub person id.
    pub id: String,
    /// Given name.
    pub given_name: String,
    /// Family name.
    pub family_name: String,
    /// Date of birth.
    pub date_of_birth: NaiveDate,
    /// Bumped by every change to the record or its identifiers.
    pub version: i32,
    /// The identifiers linked to this person, in scheme then value order.
    pub identifiers: Vec<IdentifierRecord>,
}

/// One linked identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifierRecord {
    /// Its scheme.
    pub scheme: IdentifierScheme,
    /// Its normalised value.
    pub value: String,
    /// Who linked it (the token subject).
    pub linked_by: String,
    /// When.
    pub linked_at: DateTime<Utc>,
}

/// A person to register.
#[derive(Debug, Clone)]
pub struct NewPerson {
    /// Given name.
    pub given_name: String,
    /// Family name.
    pub family_name: String,
    /// Date of birth.
    pub date_of_birth: NaiveDate,
    /// Identifiers as given (validated and normalised here).
    pub identifiers: Vec<(IdentifierScheme, String)>,
}

/// One page of people.
#[derive(Debug, Clone)]
pub struct PeoplePage {
    /// The people, in registration order.
    pub people: Vec<PersonRecord>,
    /// Whether more follow.
    pub has_next: bool,
}

/// The most people one page may hold.
pub const MAX_PAGE: u64 = 100;

fn normalise(scheme: IdentifierScheme, raw: &str) -> ApiResult<String> {
    scheme
        .normalise(raw)
        .map_err(|e| ApiError::BadInput(format!("{}: {e}", scheme.as_str())))
}

fn clean_name(field: &str, raw: &str) -> ApiResult<String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(ApiError::BadInput(format!("{field} must not be empty")));
    }
    if name.chars().count() > 200 {
        return Err(ApiError::BadInput(format!(
            "{field} must be at most 200 characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::BadInput(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(name.to_owned())
}

fn check_date_of_birth(dob: NaiveDate) -> ApiResult<()> {
    let earliest = NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or(NaiveDate::MIN);
    if dob > Utc::now().date_naive() {
        return Err(ApiError::BadInput(
            "dateOfBirth must not be in the future".into(),
        ));
    }
    if dob < earliest {
        return Err(ApiError::BadInput(
            "dateOfBirth must be 1900-01-01 or later".into(),
        ));
    }
    Ok(())
}

fn conflict_linked(scheme: IdentifierScheme) -> ApiError {
    ApiError::Conflict(format!(
        "this {} is already linked to another person; unlink it there first if it was linked in error",
        scheme.label()
    ))
}

/// Maps a unique-index violation on identifiers (a concurrent link won the race) to CONFLICT.
fn map_identifier_insert(error: DbErr, scheme: IdentifierScheme) -> ApiError {
    match error.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => conflict_linked(scheme),
        _ => error.into(),
    }
}

fn parse_person_id(id: &str) -> ApiResult<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::NotFound(format!("no person has the id '{}'", truncate(id))))
}

/// Ids are not personal data, but an arbitrary input echoed back is kept short.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Registers a person with their identifiers, in one transaction with its audit event.
pub async fn register(
    db: &DatabaseConnection,
    actor: &Principal,
    input: NewPerson,
) -> ApiResult<PersonRecord> {
    let prepared = prepare(input)?;
    let write = audit::begin_write(db).await?;
    let txn = write.txn();
    let id = insert_batch(txn, actor, std::slice::from_ref(&prepared), Utc::now())
        .await
        .map_err(|(_, e)| e)?
        .pop()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("registered person vanished")))?;
    let schemes = prepared.schemes();
    audit::append(
        txn,
        actor,
        NewEvent {
            action: "person.registered",
            person_id: Some(&id),
            detail: json!({ "identifierSchemes": schemes }),
        },
    )
    .await?;
    let record = load(txn, &id).await?;
    write.commit().await?;
    record.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("registered person vanished")))
}

/// How many people one transaction of [`register_many`] takes.
pub const REGISTER_BATCH: usize = 500;

/// Registers many people (a caseload being onboarded): every input is checked first, then they
/// go in batches of [`REGISTER_BATCH`], each batch one transaction with an audit event per
/// person. A bad input or an identifier already linked refuses its whole batch, naming the
/// input's position; batches before it stay registered. Returns the new ids in input order.
pub async fn register_many(
    db: &DatabaseConnection,
    actor: &Principal,
    inputs: Vec<NewPerson>,
) -> ApiResult<Vec<String>> {
    let mut prepared = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.into_iter().enumerate() {
        prepared.push(prepare(input).map_err(|e| at_position(index, e))?);
    }
    let mut ids = Vec::with_capacity(prepared.len());
    for (batch_no, batch) in prepared.chunks(REGISTER_BATCH).enumerate() {
        let write = audit::begin_write(db).await?;
        let txn = write.txn();
        let now = Utc::now();
        let first = batch_no * REGISTER_BATCH;
        let batch_ids = insert_batch(txn, actor, batch, now)
            .await
            .map_err(|(offset, e)| at_position(first + offset, e))?;
        let schemes: Vec<Vec<&'static str>> = batch.iter().map(Prepared::schemes).collect();
        let events: Vec<NewEvent<'_>> = batch_ids
            .iter()
            .zip(&schemes)
            .map(|(id, schemes)| NewEvent {
                action: "person.registered",
                person_id: Some(id),
                detail: json!({ "identifierSchemes": schemes }),
            })
            .collect();
        audit::append_many(txn, actor, &events).await?;
        write.commit().await?;
        ids.extend(batch_ids);
    }
    Ok(ids)
}

/// Refuses a batch in which an identifier is given twice, or is already linked to someone:
/// the error comes with the offset of the first person in the batch concerned. One query per
/// scheme, whatever the batch size.
async fn check_batch_identifiers(
    txn: &sea_orm::DatabaseTransaction,
    batch: &[Prepared],
) -> Result<(), (usize, ApiError)> {
    let mut seen: HashMap<(IdentifierScheme, &str), usize> = HashMap::new();
    for (offset, person) in batch.iter().enumerate() {
        for (scheme, value) in &person.identifiers {
            if seen.insert((*scheme, value.as_str()), offset).is_some() {
                return Err((offset, conflict_linked(*scheme)));
            }
        }
    }
    let mut schemes: Vec<IdentifierScheme> = seen.keys().map(|(s, _)| *s).collect();
    schemes.sort_by_key(|s| s.as_str());
    schemes.dedup();
    for scheme in schemes {
        let values: Vec<&str> = seen
            .keys()
            .filter(|(s, _)| *s == scheme)
            .map(|(_, v)| *v)
            .collect();
        for chunk in values.chunks(1000) {
            let taken = person_identifier::Entity::find()
                .filter(person_identifier::Column::Scheme.eq(scheme.as_str()))
                .filter(person_identifier::Column::Value.is_in(chunk.iter().copied()))
                .all(txn)
                .await
                .map_err(|e| (0, e.into()))?;
            if let Some(offset) = taken
                .iter()
                .filter_map(|row| seen.get(&(scheme, row.value.as_str())))
                .min()
            {
                return Err((*offset, conflict_linked(scheme)));
            }
        }
    }
    Ok(())
}

fn at_position(index: usize, error: ApiError) -> ApiError {
    match error {
        ApiError::BadInput(m) => ApiError::BadInput(format!("person {index}: {m}")),
        ApiError::Conflict(m) => ApiError::Conflict(format!("person {index}: {m}")),
        other => other,
    }
}

/// A registration whose names, date and identifiers have been checked and normalised.
struct Prepared {
    given_name: String,
    family_name: String,
    date_of_birth: NaiveDate,
    identifiers: Vec<(IdentifierScheme, String)>,
}

impl Prepared {
    fn schemes(&self) -> Vec<&'static str> {
        self.identifiers.iter().map(|(s, _)| s.as_str()).collect()
    }
}

fn prepare(input: NewPerson) -> ApiResult<Prepared> {
    let given_name = clean_name("givenName", &input.given_name)?;
    let family_name = clean_name("familyName", &input.family_name)?;
    check_date_of_birth(input.date_of_birth)?;
    let mut identifiers: Vec<(IdentifierScheme, String)> = Vec::new();
    for (scheme, raw) in &input.identifiers {
        let value = normalise(*scheme, raw)?;
        if identifiers.iter().any(|(s, v)| s == scheme && *v == value) {
            return Err(ApiError::BadInput(format!(
                "the same {} is given twice",
                scheme.label()
            )));
        }
        if scheme.one_per_person() && identifiers.iter().any(|(s, _)| s == scheme) {
            return Err(ApiError::BadInput(format!(
                "a person has at most one {}; two were given",
                scheme.label()
            )));
        }
        identifiers.push((*scheme, value));
    }
    Ok(Prepared {
        given_name,
        family_name,
        date_of_birth: input.date_of_birth,
        identifiers,
    })
}

/// Inserts checked people and their identifiers inside `txn` (which holds the audit head
/// lock), refusing the lot if an identifier is given twice or is already linked to anyone; the
/// error names the offset of the person concerned. Returns the new ids in order.
async fn insert_batch(
    txn: &sea_orm::DatabaseTransaction,
    actor: &Principal,
    batch: &[Prepared],
    now: DateTime<Utc>,
) -> Result<Vec<String>, (usize, ApiError)> {
    check_batch_identifiers(txn, batch).await?;
    let ids: Vec<String> = batch
        .iter()
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    person::Entity::insert_many(batch.iter().zip(&ids).map(|(p, id)| person::ActiveModel {
        id: Set(id.clone()),
        given_name: Set(p.given_name.clone()),
        family_name: Set(p.family_name.clone()),
        date_of_birth: Set(p.date_of_birth),
        version: Set(1),
        created_by: Set(actor.sub.clone()),
        created_at: Set(now),
        updated_at: Set(now),
    }))
    .exec(txn)
    .await
    .map_err(|e| (0, e.into()))?;
    let links: Vec<person_identifier::ActiveModel> = batch
        .iter()
        .zip(&ids)
        .flat_map(|(p, id)| {
            p.identifiers
                .iter()
                .map(move |(scheme, value)| identifier_row(actor, id, *scheme, value, now))
        })
        .collect();
    for chunk in links.chunks(1000) {
        person_identifier::Entity::insert_many(chunk.to_vec())
            .exec(txn)
            .await
            .map_err(|e| match e.sql_err() {
                // Checked above; only a registration racing this one gets here.
                Some(SqlErr::UniqueConstraintViolation(_)) => (
                    0,
                    ApiError::Conflict(
                        "an identifier given was linked to another person meanwhile; try again"
                            .into(),
                    ),
                ),
                _ => (0, e.into()),
            })?;
    }
    Ok(ids)
}

async fn find_identifier(
    db: &impl ConnectionTrait,
    scheme: IdentifierScheme,
    value: &str,
) -> ApiResult<Option<person_identifier::Model>> {
    Ok(person_identifier::Entity::find()
        .filter(person_identifier::Column::Scheme.eq(scheme.as_str()))
        .filter(person_identifier::Column::Value.eq(value))
        .one(db)
        .await?)
}

async fn insert_identifier(
    db: &impl ConnectionTrait,
    actor: &Principal,
    person_id: &str,
    scheme: IdentifierScheme,
    value: &str,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    identifier_row(actor, person_id, scheme, value, now)
        .insert(db)
        .await
        .map_err(|e| map_identifier_insert(e, scheme))?;
    Ok(())
}

fn identifier_row(
    actor: &Principal,
    person_id: &str,
    scheme: IdentifierScheme,
    value: &str,
    now: DateTime<Utc>,
) -> person_identifier::ActiveModel {
    person_identifier::ActiveModel {
        id: Set(uuid::Uuid::now_v7().to_string()),
        person_id: Set(person_id.to_owned()),
        scheme: Set(scheme.as_str().to_owned()),
        value: Set(value.to_owned()),
        linked_by: Set(actor.sub.clone()),
        linked_at: Set(now),
    }
}

fn to_identifier(row: person_identifier::Model) -> ApiResult<IdentifierRecord> {
    let scheme = row.scheme.parse::<IdentifierScheme>().map_err(|_| {
        ApiError::Internal(anyhow::anyhow!("stored identifier has an unknown scheme"))
    })?;
    Ok(IdentifierRecord {
        scheme,
        value: row.value,
        linked_by: row.linked_by,
        linked_at: row.linked_at,
    })
}

/// A person's row and their identifiers' rows, as read together.
fn with_identifiers(
    row: person::Model,
    identifiers: Vec<person_identifier::Model>,
) -> ApiResult<PersonRecord> {
    let identifiers = identifiers
        .into_iter()
        .map(to_identifier)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(to_record(row, identifiers))
}

fn to_record(row: person::Model, identifiers: Vec<IdentifierRecord>) -> PersonRecord {
    let mut identifiers = identifiers;
    identifiers.sort_by(|a, b| (a.scheme, &a.value).cmp(&(b.scheme, &b.value)));
    PersonRecord {
        id: row.id,
        given_name: row.given_name,
        family_name: row.family_name,
        date_of_birth: row.date_of_birth,
        version: row.version,
        identifiers,
    }
}

async fn load(db: &impl ConnectionTrait, id: &str) -> ApiResult<Option<PersonRecord>> {
    // The person and their identifiers in one statement (a join), not two round trips.
    let Some((row, identifiers)) = person::Entity::find_by_id(id.to_owned())
        .find_with_related(person_identifier::Entity)
        .all(db)
        .await?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    with_identifiers(row, identifiers).map(Some)
}

/// `$1`: the person ids, as a JSON array of strings. Each person and each person's identifiers
/// are read by index, one lookup per id (`LATERAL`, kept apart by `OFFSET 0`, as in
/// `pg_bundle`): the planner cannot see how many ids a JSON parameter holds, guesses 100, and
/// below about 40,000 people chose to scan the whole table for them (4 ms a read at 20,000
/// people, where the lookups take 0.2 ms). Columns are named as sea-orm names a join's two
/// sides, so each side reads back with `from_query_result`.
pub static PEOPLE_BY_ID_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    use sea_orm::{IdenStatic, Iterable};
    let mut columns: Vec<String> = person::Column::iter()
        .map(|c| format!(r#"p.{0} AS "A_{0}""#, c.as_str()))
        .collect();
    columns.extend(
        person_identifier::Column::iter().map(|c| format!(r#"i.{0} AS "B_{0}""#, c.as_str())),
    );
    format!(
        "SELECT {} \
         FROM (SELECT DISTINCT w.id FROM json_array_elements_text($1::json) AS w(id)) w \
         CROSS JOIN LATERAL (SELECT * FROM persons p WHERE p.id = w.id OFFSET 0) p \
         LEFT JOIN LATERAL ( \
             SELECT * FROM person_identifiers i WHERE i.person_id = p.id OFFSET 0 \
         ) i ON true \
         ORDER BY p.id",
        columns.join(", ")
    )
});

/// People by hub id with their identifiers, in one statement whatever their number (see
/// [`PEOPLE_BY_ID_SQL`]): the ids go as one JSON array, so the statement's text, and so its
/// prepared plan, is the same for one id as for sixty. Ids nobody has are absent from the
/// answer. PostgreSQL only.
pub async fn load_many(
    db: &impl ConnectionTrait,
    ids: &[String],
) -> ApiResult<HashMap<String, PersonRecord>> {
    use sea_orm::FromQueryResult;
    let ids = serde_json::to_string(ids)
        .map_err(|e| ApiError::internal(e, "listing the people to read"))?;
    let rows = db
        .query_all_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            PEOPLE_BY_ID_SQL.as_str(),
            [ids.into()],
        ))
        .await?;
    let mut people = Vec::new();
    let mut identifiers = Vec::new();
    for row in &rows {
        let person = person::Model::from_query_result(row, "A_")?;
        identifiers.extend(person_identifier::Model::from_query_result_optional(
            row, "B_",
        )?);
        if people
            .last()
            .is_none_or(|p: &person::Model| p.id != person.id)
        {
            people.push(person);
        }
    }
    records(people, identifiers)
}

/// People's records from their rows and their identifiers' rows, by hub id.
pub(crate) fn records(
    people: Vec<person::Model>,
    identifiers: Vec<person_identifier::Model>,
) -> ApiResult<HashMap<String, PersonRecord>> {
    let mut found: HashMap<String, (person::Model, Vec<person_identifier::Model>)> = people
        .into_iter()
        .map(|p| (p.id.clone(), (p, Vec::new())))
        .collect();
    for identifier in identifiers {
        if let Some(entry) = found.get_mut(&identifier.person_id) {
            entry.1.push(identifier);
        }
    }
    let mut people = HashMap::with_capacity(found.len());
    for (id, (row, identifiers)) in found {
        people.insert(id, with_identifiers(row, identifiers)?);
    }
    Ok(people)
}

/// A person by hub id; NOT_FOUND when there is none.
pub async fn get(db: &impl ConnectionTrait, id: &str) -> ApiResult<PersonRecord> {
    let id = parse_person_id(id)?;
    load(db, &id).await?.ok_or_else(|| no_person(&id))
}

fn no_person(id: &str) -> ApiError {
    ApiError::NotFound(format!("no person has the id '{id}'"))
}

/// As [`get`], through the served path's reader (inline on a SQLite file, see `reader`): the
/// read path of a query, where the person is read on every request.
///
/// On PostgreSQL the person reads of concurrent requests are merged into one statement (see
/// `coalesce`): its fixed cost, not the rows, was most of the server's share of a served query.
pub async fn get_served(reader: &crate::reader::Reader, id: &str) -> ApiResult<PersonRecord> {
    if let crate::reader::Reader::Postgres(reads) = reader {
        let id = parse_person_id(id)?;
        let on = reads.clone();
        let found = reads
            .people
            .read(id.clone(), move |ids: Vec<String>| {
                let on = on.clone();
                async move { load_many(&*on, &ids).await }
            })
            .await
            .map_err(ApiError::unshare)?;
        return found.get(&id).cloned().ok_or_else(|| no_person(&id));
    }
    let Some(local) = reader.sqlite() else {
        return get(reader, id).await;
    };
    let id = parse_person_id(id)?;
    let (row, identifiers) = local.person(&id)?.ok_or_else(|| no_person(&id))?;
    with_identifiers(row, identifiers)
}

/// As [`get_served`], for a request that will show the person's budget: on PostgreSQL the
/// person is read with everything their budget's views can ask the store, in one statement
/// merged with other requests' (see `pg_bundle::read_people_views`), and that read is also
/// returned, for the request's loaders to answer the views from. Elsewhere it is
/// [`get_served`] and no read is returned.
pub async fn get_served_with_views(
    reader: &crate::reader::Reader,
    registry: &connectors::Registry,
    id: &str,
) -> ApiResult<(PersonRecord, Option<Arc<crate::pg_bundle::Bundle>>)> {
    let crate::reader::Reader::Postgres(reads) = reader else {
        return Ok((get_served(reader, id).await?, None));
    };
    let id = parse_person_id(id)?;
    let on = reads.clone();
    let sql = reads
        .person_views_sql
        .get_or_init(|| crate::pg_bundle::people_views_sql_for(registry).into())
        .clone();
    let found = reads
        .person_views
        .read(id.clone(), move |ids: Vec<String>| {
            let (on, sql) = (on.clone(), sql.clone());
            async move { crate::pg_bundle::read_people_views(&*on, &ids, &sql).await }
        })
        .await
        .map_err(ApiError::unshare)?;
    let person = found
        .people
        .get(&id)
        .cloned()
        .ok_or_else(|| no_person(&id))?;
    Ok((person, found.bundle.clone()))
}

/// The hub id of the person holding an identifier (normalised first); NOT_FOUND when nobody
/// does. Read on the served path's reader (see `reader`): inline on a SQLite file, on the
/// readers' sessions on PostgreSQL, through the pool otherwise. A portal or an agency finds a
/// person by the identifier it knows them by before it reads their budget, so this read is on
/// the served path as much as the person's own, and sees what the person's read sees: on a
/// SQLite file, this process's writes at once and another process's (a `tributary sync`, an
/// administrator's command) within `sqlite_reads`' view age of 20 ms.
pub async fn find_by_identifier(
    reader: &crate::reader::Reader,
    scheme: IdentifierScheme,
    raw: &str,
) -> ApiResult<String> {
    let value = normalise(scheme, raw)?;
    let found = match reader.sqlite() {
        Some(local) => local.person_id_by_identifier(scheme.as_str(), &value)?,
        None => find_identifier(reader, scheme, &value)
            .await?
            .map(|row| row.person_id),
    };
    found.ok_or_else(|| {
        ApiError::NotFound(format!(
            "no person is registered with this {}",
            scheme.label()
        ))
    })
}

/// Links an identifier to a person. Linking one the person already holds changes nothing.
pub async fn link_identifier(
    db: &DatabaseConnection,
    actor: &Principal,
    person_id: &str,
    scheme: IdentifierScheme,
    raw: &str,
) -> ApiResult<PersonRecord> {
    let person_id = parse_person_id(person_id)?;
    let value = normalise(scheme, raw)?;
    let write = audit::begin_write(db).await?;
    let txn = write.txn();
    let Some(person_row) = person::Entity::find_by_id(person_id.clone())
        .one(txn)
        .await?
    else {
        return Err(ApiError::NotFound(format!(
            "no person has the id '{person_id}'"
        )));
    };
    if let Some(existing) = find_identifier(txn, scheme, &value).await? {
        if existing.person_id == person_id {
            write.rollback().await?;
            return get(db, &person_id).await;
        }
        return Err(conflict_linked(scheme));
    }
    if scheme.one_per_person() {
        let held = person_identifier::Entity::find()
            .filter(person_identifier::Column::PersonId.eq(&person_id))
            .filter(person_identifier::Column::Scheme.eq(scheme.as_str()))
            .one(txn)
            .await?;
        if held.is_some() {
            return Err(ApiError::Conflict(format!(
                "this person already has a {} linked; unlink it before linking another",
                scheme.label()
            )));
        }
    }
    let now = Utc::now();
    insert_identifier(txn, actor, &person_id, scheme, &value, now).await?;
    bump_version(txn, person_row, now).await?;
    audit::append(
        txn,
        actor,
        NewEvent {
            action: "identifier.linked",
            person_id: Some(&person_id),
            detail: json!({ "scheme": scheme.as_str() }),
        },
    )
    .await?;
    let record = load(txn, &person_id).await?;
    write.commit().await?;
    record.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("linked person vanished")))
}

/// Unlinks an identifier from a person.
pub async fn unlink_identifier(
    db: &DatabaseConnection,
    actor: &Principal,
    person_id: &str,
    scheme: IdentifierScheme,
    raw: &str,
) -> ApiResult<PersonRecord> {
    let person_id = parse_person_id(person_id)?;
    let value = normalise(scheme, raw)?;
    let write = audit::begin_write(db).await?;
    let txn = write.txn();
    let Some(person_row) = person::Entity::find_by_id(person_id.clone())
        .one(txn)
        .await?
    else {
        return Err(ApiError::NotFound(format!(
            "no person has the id '{person_id}'"
        )));
    };
    let existing = find_identifier(txn, scheme, &value)
        .await?
        .filter(|row| row.person_id == person_id)
        .ok_or_else(|| {
            ApiError::NotFound(format!("this person has no such {} linked", scheme.label()))
        })?;
    existing.delete(txn).await?;
    let now = Utc::now();
    bump_version(txn, person_row, now).await?;
    audit::append(
        txn,
        actor,
        NewEvent {
            action: "identifier.unlinked",
            person_id: Some(&person_id),
            detail: json!({ "scheme": scheme.as_str() }),
        },
    )
    .await?;
    let record = load(txn, &person_id).await?;
    write.commit().await?;
    record.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("unlinked person vanished")))
}

async fn bump_version(
    db: &impl ConnectionTrait,
    row: person::Model,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    let version = row.version + 1;
    let mut active: person::ActiveModel = row.into();
    active.version = Set(version);
    active.updated_at = Set(now);
    active.update(db).await?;
    Ok(())
}

/// One page of people in registration order, after the person id `after`.
pub async fn list(
    db: &impl ConnectionTrait,
    first: u64,
    after: Option<&str>,
) -> ApiResult<PeoplePage> {
    if !(1..=MAX_PAGE).contains(&first) {
        return Err(ApiError::BadInput(format!(
            "first must be between 1 and {MAX_PAGE}"
        )));
    }
    let mut query = person::Entity::find().order_by_asc(person::Column::Id);
    if let Some(after) = after {
        query = query.filter(person::Column::Id.gt(after));
    }
    let mut rows = query.limit(first + 1).all(db).await?;
    let has_next = rows.len() as u64 > first;
    rows.truncate(usize::try_from(first).unwrap_or(usize::MAX));
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut by_person: HashMap<String, Vec<IdentifierRecord>> = HashMap::new();
    if !ids.is_empty() {
        for row in person_identifier::Entity::find()
            .filter(person_identifier::Column::PersonId.is_in(ids))
            .all(db)
            .await?
        {
            let person_id = row.person_id.clone();
            by_person
                .entry(person_id)
                .or_default()
                .push(to_identifier(row)?);
        }
    }
    let people = rows
        .into_iter()
        .map(|row| {
            let identifiers = by_person.remove(&row.id).unwrap_or_default();
            to_record(row, identifiers)
        })
        .collect();
    Ok(PeoplePage { people, has_next })
}

/// How many people are registered.
pub async fn count(db: &impl ConnectionTrait) -> ApiResult<u64> {
    use sea_orm::PaginatorTrait;
    Ok(person::Entity::find().count(db).await?)
}

/// A page of registered people with their identifiers, in id order after `after`: a sync walks
/// the registry a page at a time, so its memory does not grow with the number of people.
pub async fn identifiers_page(
    db: &impl ConnectionTrait,
    after: Option<&str>,
    limit: u64,
) -> ApiResult<Vec<(String, Vec<(IdentifierScheme, String)>)>> {
    let mut query = person::Entity::find()
        .select_only()
        .column(person::Column::Id)
        .order_by_asc(person::Column::Id)
        .limit(limit);
    if let Some(after) = after {
        query = query.filter(person::Column::Id.gt(after));
    }
    let ids: Vec<String> = query.into_tuple().all(db).await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut by_person: std::collections::BTreeMap<String, Vec<(IdentifierScheme, String)>> =
        ids.iter().map(|id| (id.clone(), Vec::new())).collect();
    for row in person_identifier::Entity::find()
        .filter(person_identifier::Column::PersonId.is_in(ids))
        .all(db)
        .await?
    {
        let id = row.person_id.clone();
        let identifier = to_identifier(row)?;
        if let Some(list) = by_person.get_mut(&id) {
            list.push((identifier.scheme, identifier.value));
        }
    }
    Ok(by_person.into_iter().collect())
}

impl PersonRecord {
    /// The identifiers as connectors take them.
    pub fn identifier_pairs(&self) -> Vec<(IdentifierScheme, String)> {
        self.identifiers
            .iter()
            .map(|i| (i.scheme, i.value.clone()))
            .collect()
    }
}
