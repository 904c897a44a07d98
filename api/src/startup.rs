//! Building and running the HTTP server.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::Context as _;
use async_graphql::http::GraphiQLSource;
use connectors::{Registry, Secrets, Shape};
use sea_orm::DatabaseConnection;

use crate::auth::Authenticator;
use crate::config::{LimitSettings, Settings};
use crate::error::ApiError;
use crate::graphql::{AppContext, TributarySchema, build_schema};
use crate::limits::{self, Refusal, TokenRate};
use crate::services::bulk::sync_extract;

/// The header an agency or auditor states its purpose in.
pub const PURPOSE_HEADER: &str = "Tributary-Purpose";

struct HttpState {
    schema: TributarySchema,
    auth: Arc<Authenticator>,
    db: DatabaseConnection,
    reader: crate::reader::Reader,
    reads: crate::audit::ReadRecorder,
    documents: limits::DocumentCache,
    limits: LimitSettings,
    rate: TokenRate,
}

/// A built server, bound and ready to run.
pub struct Application {
    port: u16,
    server: Server,
    db: DatabaseConnection,
    registry: Arc<Registry>,
    queries: Arc<AtomicU64>,
    anchoring: Option<(std::path::PathBuf, secrecy::SecretString, Duration)>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Connects to and migrates the store, builds the connectors, loads bulk extracts, then
    /// binds the server (port 0 picks a free port).
    pub async fn build(
        settings: Settings,
        auth: Authenticator,
        secrets: &Secrets,
    ) -> anyhow::Result<Self> {
        let mut db = crate::db::connect_server(&settings.database).await?;
        crate::db::migrate(&db).await?;
        // Counted from here on, so a test can see how many queries a request costs.
        let queries = Arc::new(AtomicU64::new(0));
        let counter = queries.clone();
        db.set_metric_callback(move |info| {
            counter.fetch_add(1, Ordering::Relaxed);
            // A write outside `db::WriteTxn` (a statement committing on its own) is seen by
            // the inline readers at once too (see `sqlite_reads::data_changed`).
            let sql = info.statement.sql.trim_start();
            if !sql
                .get(..6)
                .is_some_and(|w| w.eq_ignore_ascii_case("select"))
            {
                crate::sqlite_reads::data_changed();
            }
        });
        Self::with_counter(settings, auth, secrets, db, queries).await
    }

    /// How many database queries the server has run (counted when built by `build`).
    pub fn query_counter(&self) -> Arc<AtomicU64> {
        self.queries.clone()
    }

    /// As [`Application::build`], over an already migrated store.
    pub async fn with_database(
        settings: Settings,
        auth: Authenticator,
        secrets: &Secrets,
        db: DatabaseConnection,
    ) -> anyhow::Result<Self> {
        Self::with_counter(settings, auth, secrets, db, Arc::new(AtomicU64::new(0))).await
    }

    async fn with_counter(
        settings: Settings,
        auth: Authenticator,
        secrets: &Secrets,
        db: DatabaseConnection,
        queries: Arc<AtomicU64>,
    ) -> anyhow::Result<Self> {
        // The served path's reads (see `reader`), counted with the rest.
        let reader = crate::reader::Reader::open(
            &db,
            &settings.database.url,
            settings.database.max_connections,
            &queries,
        );
        let registry = Arc::new(
            Registry::build(&settings.connectors, secrets)
                .map_err(|e| anyhow::anyhow!("configuration error: {e}"))?,
        );
        // Bulk sources are loaded before the first request, so a look-up never waits on a
        // download; a partner that is down now is retried by the refresher.
        for connector in registry.all().filter(|c| c.shape() == Shape::Bulk) {
            match sync_extract(&db, connector.as_ref()).await {
                Ok(outcome) => {
                    tracing::info!(stream = %connector.settings().id, ?outcome, "extract at start-up")
                }
                Err(e) => {
                    tracing::warn!(stream = %connector.settings().id, error = %e, "extract at start-up failed")
                }
            }
        }
        let listener = TcpListener::bind(&settings.server.bind)
            .with_context(|| format!("failed to bind server.bind = {}", settings.server.bind))?;
        let port = listener.local_addr()?.port();
        let dev = settings.server.dev;
        let app = AppContext {
            db: db.clone(),
            connectors: settings.connectors.clone(),
            registry: registry.clone(),
            reader: reader.clone(),
            anchors: match (&settings.audit.anchor_dir, settings.anchor_key()?) {
                (Some(dir), Some(key)) => Some((dir.clone(), key)),
                _ => None,
            },
        };
        let state = web::Data::new(HttpState {
            schema: build_schema(app, dev, &settings.limits),
            auth: Arc::new(auth),
            db: db.clone(),
            reads: crate::audit::ReadRecorder::start(
                db.clone(),
                reader.sqlite().cloned(),
                (db.get_database_backend() == sea_orm::DatabaseBackend::Postgres)
                    .then(|| {
                        crate::audit::PgAppender::open(&settings.database.url, queries.clone())
                    })
                    .flatten(),
            ),
            reader,
            documents: limits::DocumentCache::default(),
            rate: TokenRate::new(&settings.limits),
            limits: settings.limits.clone(),
        });
        let server = HttpServer::new(move || {
            let mut app = App::new()
                .app_data(state.clone())
                .route("/graphql", web::post().to(graphql))
                .route("/health/live", web::get().to(live))
                .route("/health/ready", web::get().to(ready));
            if dev {
                app = app.route("/graphiql", web::get().to(graphiql));
            }
            app
        })
        .workers(2)
        .listen(listener)?
        .run();
        let anchoring = match (&settings.audit.anchor_dir, settings.anchor_key()?) {
            (Some(dir), Some(key)) if settings.audit.anchor_interval_secs > 0 => Some((
                dir.clone(),
                key,
                Duration::from_secs(settings.audit.anchor_interval_secs),
            )),
            _ => None,
        };
        Ok(Self {
            port,
            server,
            db,
            registry,
            queries,
            anchoring,
        })
    }

    /// The connectors.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The store the server uses.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Serves until the process is stopped, refreshing bulk extracts at their intervals.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let mut refreshers = Vec::new();
        for connector in self.registry.all().filter(|c| c.shape() == Shape::Bulk) {
            let (db, connector) = (self.db.clone(), connector.clone());
            let every = Duration::from_secs(connector.settings().refresh_secs.max(1));
            refreshers.push(tokio::spawn(async move {
                let mut ticker = tokio::time::interval(every);
                ticker.tick().await;
                loop {
                    ticker.tick().await;
                    if let Err(e) = sync_extract(&db, connector.as_ref()).await {
                        tracing::warn!(stream = %connector.settings().id, error = %e, "extract refresh failed");
                    }
                }
            }));
        }
        if let Some((dir, key, every)) = self.anchoring.clone() {
            let db = self.db.clone();
            refreshers.push(tokio::spawn(async move {
                let mut ticker = tokio::time::interval(every);
                loop {
                    ticker.tick().await;
                    match crate::audit::anchor(&db, &dir, &key).await {
                        Ok(anchor) => tracing::info!(seq = anchor.seq, "audit chain anchored"),
                        Err(e) => tracing::warn!(error = %e, "anchoring the audit chain failed"),
                    }
                }
            }));
        }
        let result = self.server.await;
        for refresher in refreshers {
            refresher.abort();
        }
        result
    }
}

fn error_body(error: &ApiError, request_id: &str) -> serde_json::Value {
    serde_json::json!({
        "data": null,
        "errors": [{
            "message": error.to_string(),
            "extensions": { "code": error.code(), "requestId": request_id }
        }]
    })
}

fn refuse(refusal: &Refusal, request_id: &str) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(refusal.status())
        .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
    let mut response = HttpResponse::build(status);
    if *refusal == Refusal::RateLimited {
        response.insert_header((header::RETRY_AFTER, "1"));
    }
    response
        .insert_header(("x-request-id", request_id.to_owned()))
        .json(serde_json::json!({
            "data": null,
            "errors": [{
                "message": refusal.message(),
                "extensions": { "code": refusal.code(), "requestId": request_id }
            }]
        }))
}

async fn graphql(
    state: web::Data<HttpState>,
    request: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let request_id = uuid::Uuid::new_v4().to_string();
    let headers = request.headers();
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
    };
    let token = text(header::AUTHORIZATION.as_str())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let principal = match token {
        Some(token) => state.auth.authenticate(
            token,
            text(PURPOSE_HEADER).map(str::to_owned),
            request_id.clone(),
        ),
        None => Err(ApiError::Unauthenticated),
    };
    let principal = match principal {
        Ok(p) => p,
        Err(e) => {
            return HttpResponse::Unauthorized()
                .insert_header(("x-request-id", request_id.clone()))
                .json(error_body(&e, &request_id));
        }
    };
    if let Err(refusal) = state
        .rate
        .check(&format!("{}:{}", principal.role, principal.sub))
    {
        return refuse(&refusal, &request_id);
    }
    if !limits::is_json(text(header::CONTENT_TYPE.as_str())) {
        return refuse(&Refusal::NotJson, &request_id);
    }
    let declared = text(header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse().ok());
    let body = match limits::read_body(payload, declared, state.limits.max_body_bytes).await {
        Ok(body) => body,
        Err(refusal) => return refuse(&refusal, &request_id),
    };
    let mut batch: async_graphql::BatchRequest = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(e) => return refuse(&Refusal::Malformed(e.to_string()), &request_id),
    };
    let parsed = match limits::check_batch(&mut batch, &state.limits, &state.documents) {
        Ok(parsed) => parsed,
        Err(refusal) => return refuse(&refusal, &request_id),
    };
    let role = principal.role;
    let reads = Arc::new(crate::graphql::ReadLog::recording(
        state.reads.clone(),
        principal.clone(),
    ));
    let run = async |request: async_graphql::Request, parsed: Option<Arc<limits::Parsed>>| {
        let mut request = request
            .data(principal.clone())
            .data(crate::graphql::loaders::Loaders::new(&state.reader))
            .data(reads.clone());
        // Its text, for the validation to be answered from when it passed before.
        if let Some(parsed) = parsed {
            request = request.data(parsed);
        }
        state.schema.execute(request).await
    };
    let batched = matches!(batch, async_graphql::BatchRequest::Batch(_));
    let mut parsed = parsed.into_iter();
    let mut responses = match batch {
        async_graphql::BatchRequest::Single(request) => {
            vec![run(request, parsed.next().flatten()).await]
        }
        async_graphql::BatchRequest::Batch(requests) => {
            let mut out = Vec::with_capacity(requests.len());
            for request in requests {
                out.push(run(request, parsed.next().flatten()).await);
            }
            out
        }
    };
    // No personal data leaves without its read in the audit log: what was not recorded
    // already (see `ReadLog::record_now`) is recorded now.
    if let Err(e) = state.reads.record(&principal, reads.take()).await {
        let e = ApiError::internal(anyhow::anyhow!("{e}"), "recording reads in the audit log");
        tracing::error!(request_id = %request_id, error = ?e, "audit write failed; answer withheld");
        return HttpResponse::InternalServerError()
            .insert_header(("x-request-id", request_id.clone()))
            .json(error_body(&e, &request_id));
    }
    let mut errors = 0;
    for response in &mut responses {
        // Errors raised before any resolver ran (parse, validation, a limit, a malformed
        // scalar) are the caller's input: give them the documented code too.
        for error in &mut response.errors {
            let extensions = error.extensions.get_or_insert_with(Default::default);
            if extensions.get("code").is_none() {
                extensions.set("code", "BAD_USER_INPUT");
            }
        }
        errors += response.errors.len();
    }
    tracing::info!(request_id = %request_id, role = %role, errors, "graphql request");
    // Written by `respond`, which places a budget the walk wrote as JSON as it is.
    let mut body = Vec::with_capacity(16 * 1024);
    let written = if batched {
        crate::graphql::respond::write_batch(&mut body, &responses)
    } else {
        crate::graphql::respond::write_response(&mut body, &responses[0])
    };
    if let Err(e) = written {
        let e = ApiError::internal(anyhow::anyhow!("{e}"), "writing the answer");
        return HttpResponse::InternalServerError()
            .insert_header(("x-request-id", request_id.clone()))
            .json(error_body(&e, &request_id));
    }
    HttpResponse::Ok()
        .insert_header(("x-request-id", request_id))
        .content_type("application/json")
        .body(body)
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "live" }))
}

async fn ready(state: web::Data<HttpState>) -> HttpResponse {
    match state.db.ping().await {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: database unreachable");
            HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({ "status": "database unreachable" }))
        }
    }
}

async fn graphiql() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(GraphiQLSource::build().endpoint("/graphql").finish())
}
