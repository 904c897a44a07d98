//! Test support: the real server on a free port over a fresh database, with typed helpers.
//!
//! Each test gets its own store: a temporary SQLite file, or a new UUID-named PostgreSQL
//! database on the server at `TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432`).
//! PostgreSQL tests fail, rather than skip, when no server answers: `scripts/test.sh` starts one.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support fails loudly"
)]

use std::sync::Arc;
use std::time::Duration;

use sandboxes::Sandboxes;
use sandboxes::world::{DEMO_SEED, World};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use secrecy::SecretString;
use serde_json::{Value, json};
use tributary::Application;
use tributary::auth::{Authenticator, Role, TokenIssuer};
use tributary::config::Settings;

/// Which store a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A temporary SQLite file.
    Sqlite,
    /// A fresh database on the test PostgreSQL server.
    Postgres,
}

/// A running hub for one test.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// The server's store, for checking what was (not) written.
    pub db: DatabaseConnection,
    /// The HTTP client.
    pub client: reqwest::Client,
    issuer: TokenIssuer,
    /// The synthetic world the sandboxes serve.
    pub world: Arc<World>,
    /// The partner sandboxes, with their fault switches.
    pub sandboxes: Sandboxes,
    /// The server's connectors.
    pub registry: Arc<connectors::Registry>,
    /// Database queries the server has run.
    pub queries: Arc<std::sync::atomic::AtomicU64>,
    /// The store's URL.
    pub database_url: String,
    _dir: tempfile::TempDir,
}

/// A GraphQL response.
#[derive(Debug, Clone)]
pub struct GqlResponse {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
}

impl GqlResponse {
    /// `data`, failing the test if there were errors.
    pub fn data(&self) -> &Value {
        assert!(
            self.body.get("errors").is_none(),
            "unexpected errors: {}",
            self.body
        );
        &self.body["data"]
    }

    /// The first error's `extensions.code`.
    pub fn code(&self) -> Option<&str> {
        self.body["errors"][0]["extensions"]["code"].as_str()
    }

    /// The first error's message.
    pub fn message(&self) -> &str {
        self.body["errors"][0]["message"].as_str().unwrap_or("")
    }
}

/// The PostgreSQL server tests use.
pub fn postgres_base_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// A second hub instance over the same database as `first` (as behind a load balancer).
pub async fn spawn_second_instance(first: &TestApp) -> TestApp {
    let url = first.database_url.clone();
    spawn_app_on(
        Some(url),
        Backend::Sqlite,
        |_| {},
        tributary::demo::sandbox_secrets(),
    )
    .await
}

/// A fresh, empty database URL on `backend`.
pub async fn fresh_database(backend: Backend, dir: &tempfile::TempDir) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}/hub.db?mode=rwc", dir.path().display()),
        Backend::Postgres => {
            let base = postgres_base_url();
            let admin = Database::connect(format!("{base}/postgres"))
                .await
                .unwrap_or_else(|e| {
                    panic!("PostgreSQL is not reachable at {base} ({e}); run scripts/test.sh, which starts it, or set TEST_POSTGRES_URL")
                });
            let name = format!("tributary_test_{}", uuid::Uuid::new_v4().simple());
            admin
                .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                .await
                .expect("create a test database");
            admin.close().await.ok();
            format!("{base}/{name}")
        }
    }
}

/// As [`spawn_app`], with every partner asked on every view (`cache_ttl_secs = 0`).
pub async fn spawn_uncached_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |s| {
        for c in &mut s.connectors {
            c.cache_ttl_secs = 0;
        }
    })
    .await
}

/// Starts the real server on a free port over a fresh, migrated database.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// As [`spawn_app`], with the settings adjusted first.
pub async fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with_secrets(backend, adjust, tributary::demo::sandbox_secrets()).await
}

/// As [`spawn_app_with`], with the connectors' secrets given.
pub async fn spawn_app_with_secrets(
    backend: Backend,
    adjust: impl FnOnce(&mut Settings),
    secrets: connectors::Secrets,
) -> TestApp {
    spawn_app_on(None, backend, adjust, secrets).await
}

/// As [`spawn_app`], in a world changed by `edit` first (the partners serve the changed one).
pub async fn spawn_app_in_world(backend: Backend, edit: impl FnOnce(&mut World)) -> TestApp {
    let mut world = World::generate(DEMO_SEED, 60);
    edit(&mut world);
    spawn_app_in(
        Arc::new(world),
        None,
        backend,
        |_| {},
        tributary::demo::sandbox_secrets(),
    )
    .await
}

async fn spawn_app_on(
    database_url: Option<String>,
    backend: Backend,
    adjust: impl FnOnce(&mut Settings),
    secrets: connectors::Secrets,
) -> TestApp {
    let world = Arc::new(World::generate(DEMO_SEED, 60));
    spawn_app_in(world, database_url, backend, adjust, secrets).await
}

async fn spawn_app_in(
    world: Arc<World>,
    database_url: Option<String>,
    backend: Backend,
    adjust: impl FnOnce(&mut Settings),
    secrets: connectors::Secrets,
) -> TestApp {
    if std::env::var("TEST_LOG").is_ok() {
        tributary::telemetry::init(false);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings::default();
    settings.server.bind = "127.0.0.1:0".into();
    settings.database.url = match database_url {
        Some(url) => url,
        None => fresh_database(backend, &dir).await,
    };
    let database_url = settings.database.url.clone();
    settings.database.max_connections = 8;
    let sandboxes = Sandboxes::start(world.clone()).expect("the sandboxes start");
    settings.connectors =
        tributary::demo::demo_connectors(tributary::demo::sandbox_urls(&sandboxes));
    adjust(&mut settings);
    let secret = SecretString::from(format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    ));
    let issuer = TokenIssuer::hs256(&settings.auth, &secret);
    let auth = match settings.auth.algorithm {
        tributary::config::JwtAlgorithm::HS256 => Authenticator::hs256(&settings.auth, &secret),
        _ => Authenticator::from_settings(&settings).expect("the JWKS loads"),
    };
    let app = Application::build(settings, auth, &secrets)
        .await
        .expect("the application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let registry = app.registry().clone();
    let queries = app.query_counter();
    let db = app.db().clone();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        db,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        issuer,
        world,
        sandboxes,
        registry,
        queries,
        database_url,
        _dir: dir,
    }
}

impl TestApp {
    /// The server's issuer and audience, for hand-made tokens.
    pub fn issuer(&self) -> &TokenIssuer {
        &self.issuer
    }

    /// A token for `sub` in `role`.
    pub fn token(&self, sub: &str, role: Role) -> String {
        self.issuer.issue(sub, role, Vec::new(), None, 600).unwrap()
    }

    /// An administrator's token.
    pub fn admin(&self) -> String {
        self.token("test-admin", Role::Admin)
    }

    /// An agency token for `agency`.
    pub fn agency(&self, agency: &str) -> String {
        self.issuer
            .issue(
                "test-worker",
                Role::Agency,
                Vec::new(),
                Some(agency.into()),
                600,
            )
            .unwrap()
    }

    /// A representative acting for `people`.
    pub fn representative(&self, people: &[&str]) -> String {
        self.issuer
            .issue(
                "test-rep",
                Role::Representative,
                people.iter().map(|p| (*p).to_owned()).collect(),
                None,
                600,
            )
            .unwrap()
    }

    /// Sends a GraphQL request with a token and optional purpose.
    pub async fn gql_as(
        &self,
        token: Option<&str>,
        purpose: Option<&str>,
        query: &str,
        variables: Value,
    ) -> GqlResponse {
        let mut request = self
            .client
            .post(format!("{}/graphql", self.address))
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(purpose) = purpose {
            request = request.header("Tributary-Purpose", purpose);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.expect("a JSON body");
        GqlResponse { status, body }
    }

    /// Reads a person as themselves once, so the audit writer has recorded a group and knows
    /// where the chain's head is: on PostgreSQL a record then costs one statement, and the
    /// statement counts of the requests after this are steady.
    pub async fn warm_audit_writer(&self, person_id: &str) {
        let response = self
            .gql_as(
                Some(&self.person(person_id)),
                None,
                "query($id: ID!) { person(id: $id) { id } }",
                json!({ "id": person_id }),
            )
            .await;
        assert_eq!(response.data()["person"]["id"], person_id);
    }

    /// Sends a GraphQL request as an administrator.
    pub async fn gql(&self, query: &str, variables: Value) -> GqlResponse {
        self.gql_as(Some(&self.admin()), None, query, variables)
            .await
    }

    /// Registers a person and returns their id.
    pub async fn register(
        &self,
        given: &str,
        family: &str,
        dob: &str,
        identifiers: Value,
    ) -> String {
        let response = self
            .gql(
                REGISTER,
                json!({ "input": {
                    "givenName": given, "familyName": family, "dateOfBirth": dob,
                    "identifiers": identifiers
                }}),
            )
            .await;
        response.data()["registerPerson"]["id"]
            .as_str()
            .expect("an id")
            .to_owned()
    }

    /// Registers the whole synthetic world; returns hub ids in world order.
    pub async fn register_world(&self) -> Vec<String> {
        tributary::demo::register_world(&self.db, &self.world)
            .await
            .unwrap()
    }

    /// A person token for hub person `id`.
    pub fn person(&self, id: &str) -> String {
        self.token(id, Role::Person)
    }

    /// The person's combined budget for 2026-27, as that person.
    pub async fn budget(&self, id: &str) -> Value {
        let response = self
            .gql_as(Some(&self.person(id)), None, BUDGET, json!({ "id": id }))
            .await;
        response.data()["person"]["superBudget"].clone()
    }

    /// Runs raw SQL against the server's store (tests tamper with it on purpose).
    pub async fn execute(&self, sql: &str) {
        self.db.execute_unprepared(sql).await.unwrap();
        // A raw statement escapes sea-orm's statement hook; it is this process's write, so the
        // inline readers are told, as the server's own writes tell them.
        tributary::sqlite_reads::data_changed();
    }

    /// The audit actions recorded about a person, oldest first.
    pub async fn actions_for(&self, person_id: &str) -> Vec<String> {
        let rows = self
            .db
            .query_all_raw(sea_orm::Statement::from_string(
                self.db.get_database_backend(),
                format!(
                    "SELECT action FROM audit_events WHERE person_id = '{person_id}' ORDER BY seq"
                ),
            ))
            .await
            .unwrap();
        rows.iter()
            .map(|r| r.try_get::<String>("", "action").unwrap())
            .collect()
    }

    /// Counts rows in a table.
    pub async fn count(&self, table: &str) -> i64 {
        self.scalar(format!("SELECT COUNT(*) FROM {table}")).await
    }

    /// The one value a query returns (its first row's first column).
    pub async fn scalar<T: sea_orm::TryGetable>(&self, sql: impl Into<String>) -> T {
        let sql: String = sql.into();
        self.db
            .query_one_raw(sea_orm::Statement::from_string(
                self.db.get_database_backend(),
                sql.clone(),
            ))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no row from {sql}"))
            .try_get_by_index::<T>(0)
            .unwrap()
    }
}

/// A person's budget with the fields tests check.
pub const BUDGET: &str = "query($id: ID!) { person(id: $id) { superBudget(financialYear: \"2026-27\") {
  from to gross { amount } contribution { amount } net { amount } committed { amount } spent { amount } remaining { amount }
  purposes { purpose gross { amount } }
  streams { stream { id } status asOf gross { amount } contribution { amount } net { amount } committed { amount } spent { amount } remaining { amount }
    awards { id upstreamId purpose frequency amount { amount } entitlement { amount } status
      lines { upstreamId purpose entitlement { amount } } source { connector upstreamId version fetchedAt contentHash } } }
  warnings { code message streamId itemId } } } }";

/// A stream of a budget by id.
pub fn stream<'a>(budget: &'a Value, id: &str) -> Option<&'a Value> {
    budget["streams"]
        .as_array()?
        .iter()
        .find(|s| s["stream"]["id"] == id)
}

/// The warning codes of a budget that concern `stream_id`.
pub fn warning_codes(budget: &Value, stream_id: &str) -> Vec<String> {
    budget["warnings"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .filter(|w| w["streamId"] == stream_id)
                .map(|w| w["code"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The registerPerson mutation, returning the fields tests check.
pub const REGISTER: &str = "mutation($input: RegisterPersonInput!) {
  registerPerson(input: $input) { id givenName familyName dateOfBirth version identifiers { scheme value linkedBy } }
}";

/// Runs a test body on SQLite and on PostgreSQL, as two tests named `<name>::sqlite` and
/// `<name>::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::Backend::Sqlite).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::Backend::Postgres).await;
                }
            }
        )+
    };
}
