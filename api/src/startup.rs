//! Building and running the HTTP server.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::Context as _;
use async_graphql::http::GraphiQLSource;
use async_graphql_actix_web::GraphQLRequest;
use connectors::{Registry, Secrets, Shape};
use sea_orm::DatabaseConnection;

use crate::auth::Authenticator;
use crate::config::Settings;
use crate::error::ApiError;
use crate::graphql::{AppContext, TributarySchema, build_schema};
use crate::services::bulk::sync_extract;

/// The header an agency or auditor states its purpose in.
pub const PURPOSE_HEADER: &str = "Tributary-Purpose";

struct HttpState {
    schema: TributarySchema,
    auth: Arc<Authenticator>,
    db: DatabaseConnection,
}

/// A built server, bound and ready to run.
pub struct Application {
    port: u16,
    server: Server,
    db: DatabaseConnection,
    registry: Arc<Registry>,
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
        let db = crate::db::connect(&settings.database).await?;
        crate::db::migrate(&db).await?;
        Self::with_database(settings, auth, secrets, db).await
    }

    /// As [`Application::build`], over an already migrated store.
    pub async fn with_database(
        settings: Settings,
        auth: Authenticator,
        secrets: &Secrets,
        db: DatabaseConnection,
    ) -> anyhow::Result<Self> {
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
        let schema = build_schema(
            AppContext {
                db: db.clone(),
                connectors: settings.connectors.clone(),
                registry: registry.clone(),
            },
            dev,
        );
        let state = web::Data::new(HttpState {
            schema,
            auth: Arc::new(auth),
            db: db.clone(),
        });
        let server = HttpServer::new(move || {
            let mut app = App::new()
                .app_data(state.clone())
                .app_data(web::JsonConfig::default().limit(256 * 1024))
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
        Ok(Self {
            port,
            server,
            db,
            registry,
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

async fn graphql(
    state: web::Data<HttpState>,
    request: HttpRequest,
    body: GraphQLRequest,
) -> HttpResponse {
    let request_id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!("graphql", request_id = %request_id);
    let _guard = span.enter();
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let purpose = request
        .headers()
        .get(PURPOSE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let principal = match token {
        Some(token) => state.auth.authenticate(token, purpose, request_id.clone()),
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
    drop(_guard);
    let role = principal.role;
    let mut response = state
        .schema
        .execute(body.into_inner().data(principal))
        .await;
    // Errors raised before any resolver ran (parse, validation, a malformed scalar) are the
    // caller's input: give them the documented code too.
    for error in &mut response.errors {
        let extensions = error.extensions.get_or_insert_with(Default::default);
        if extensions.get("code").is_none() {
            extensions.set("code", "BAD_USER_INPUT");
        }
    }
    tracing::info!(request_id = %request_id, role = %role, errors = response.errors.len(), "graphql request");
    HttpResponse::Ok()
        .insert_header(("x-request-id", request_id))
        .json(response)
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
