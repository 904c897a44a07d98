//! Building and running the HTTP server.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::Context as _;
use async_graphql::http::GraphiQLSource;
use async_graphql_actix_web::GraphQLRequest;
use sea_orm::DatabaseConnection;

use crate::auth::Authenticator;
use crate::config::Settings;
use crate::error::ApiError;
use crate::graphql::{AppContext, TributarySchema, build_schema};

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
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Connects to and migrates the store, then binds the server (port 0 picks a free port).
    pub async fn build(settings: Settings, auth: Authenticator) -> anyhow::Result<Self> {
        let db = crate::db::connect(&settings.database).await?;
        crate::db::migrate(&db).await?;
        Self::with_database(settings, auth, db)
    }

    /// Binds the server over an already migrated store.
    pub fn with_database(
        settings: Settings,
        auth: Authenticator,
        db: DatabaseConnection,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(&settings.server.bind)
            .with_context(|| format!("failed to bind server.bind = {}", settings.server.bind))?;
        let port = listener.local_addr()?.port();
        let dev = settings.server.dev;
        let schema = build_schema(
            AppContext {
                db: db.clone(),
                connectors: settings.connectors.clone(),
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
        Ok(Self { port, server, db })
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The store the server uses.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Serves until the process is stopped.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
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
