//! The four partner systems served over HTTP from a [`World`], in exactly the formats
//! `shared/upstreams/` publishes, with faults a test can switch on: latency, HTTP 500, HTTP 429
//! with `Retry-After`, a malformed body, a body cut off part-way, and (by stopping the server)
//! refused connections.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::world::{SyntheticPerson, World};

/// The bearer token the council sandbox accepts.
pub const LA_TOKEN: &str = "sandbox-council-token";
/// The bearer token the health board sandbox accepts.
pub const PHB_TOKEN: &str = "sandbox-health-board-token";
/// The API key the Access to Work sandbox accepts.
pub const ATW_KEY: &str = "sandbox-access-to-work-key";

/// Which partner a sandbox plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Partner {
    /// The council (la-social-care.md).
    Council,
    /// The Independent Living Fund (ilf.md).
    Ilf,
    /// Access to Work (access-to-work.md).
    AccessToWork,
    /// The health board (phb.md).
    HealthBoard,
}

/// A fault a sandbox can be told to produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Behave.
    None,
    /// Answer 500.
    ServerError,
    /// Answer 429 with this Retry-After, in seconds.
    TooManyRequests(u64),
    /// Answer 200 with a body that is not the published format.
    Malformed,
    /// Start a 200 answer and cut it off.
    Truncated,
}

/// The switches a test holds on a running sandbox.
#[derive(Debug)]
pub struct Faults {
    latency_ms: AtomicU64,
    fault: Mutex<Fault>,
    remaining: AtomicI64,
    hits: AtomicU64,
    /// Requests being answered now, and the most there have been at once.
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_ms: AtomicU64::new(0),
            fault: Mutex::new(Fault::None),
            remaining: AtomicI64::new(0),
            hits: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            peak_in_flight: AtomicU64::new(0),
        }
    }
}

impl Faults {
    /// Delays every answer by `ms`.
    pub fn set_latency_ms(&self, ms: u64) {
        self.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// Produces `fault` on every request from now on.
    pub fn set(&self, fault: Fault) {
        self.set_for(fault, -1);
    }

    /// Produces `fault` on the next `times` requests (negative: every request), then behaves.
    pub fn set_for(&self, fault: Fault, times: i64) {
        *self
            .fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fault;
        self.remaining.store(times, Ordering::SeqCst);
    }

    /// Stops producing faults.
    pub fn clear(&self) {
        self.set_for(Fault::None, 0);
        self.set_latency_ms(0);
    }

    /// How many requests reached the sandbox.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// The most requests the sandbox has been answering at once (each counted while its
    /// latency runs), since it started or since [`Faults::reset_peak_in_flight`].
    pub fn peak_in_flight(&self) -> u64 {
        self.peak_in_flight.load(Ordering::SeqCst)
    }

    /// Starts counting [`Faults::peak_in_flight`] afresh.
    pub fn reset_peak_in_flight(&self) {
        self.peak_in_flight
            .store(self.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    fn take(&self) -> Fault {
        let fault = *self
            .fault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if fault == Fault::None {
            return Fault::None;
        }
        let left = self.remaining.load(Ordering::SeqCst);
        if left == 0 {
            return Fault::None;
        }
        if left > 0 {
            self.remaining.fetch_sub(1, Ordering::SeqCst);
        }
        fault
    }
}

/// Lookups built once from the world, so a large world answers quickly.
#[derive(Debug, Default)]
struct Index {
    by_nhs: HashMap<String, usize>,
    by_nino: HashMap<String, usize>,
    by_client: HashMap<String, (usize, usize)>,
    ilf_csv: bytes::Bytes,
    ilf_etag: String,
}

struct State {
    world: Arc<World>,
    index: Arc<Index>,
    faults: Arc<Faults>,
}

/// A running sandbox.
#[derive(Debug)]
pub struct Sandbox {
    /// Which partner it plays.
    pub partner: Partner,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its fault switches.
    pub faults: Arc<Faults>,
    handle: ServerHandle,
}

impl Sandbox {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops it: connections are refused from then on.
    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

/// All four sandboxes over one world.
#[derive(Debug)]
pub struct Sandboxes {
    /// The council.
    pub council: Sandbox,
    /// The ILF.
    pub ilf: Sandbox,
    /// Access to Work.
    pub access_to_work: Sandbox,
    /// The health board.
    pub health_board: Sandbox,
}

impl Sandboxes {
    /// Starts all four on free ports of 127.0.0.1; each runs on the current Tokio runtime.
    pub fn start(world: Arc<World>) -> std::io::Result<Self> {
        let index = Arc::new(build_index(&world)?);
        let start = |partner| start_one(partner, world.clone(), index.clone());
        Ok(Self {
            council: start(Partner::Council)?,
            ilf: start(Partner::Ilf)?,
            access_to_work: start(Partner::AccessToWork)?,
            health_board: start(Partner::HealthBoard)?,
        })
    }

    /// Each sandbox, in the order council, ILF, Access to Work, health board.
    pub fn all(&self) -> [&Sandbox; 4] {
        [
            &self.council,
            &self.ilf,
            &self.access_to_work,
            &self.health_board,
        ]
    }
}

/// The ILF extract of a world as CSV, exactly as the fund publishes it.
pub fn ilf_csv(world: &World) -> std::io::Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(connectors::ilf::HEADER)?;
    for person in &world.people {
        for row in &person.ilf {
            writer.write_record([
                &row.ilf_reference,
                &row.nino,
                &row.family_name,
                &row.date_of_birth,
                &row.award_amount,
                &row.award_period,
                &row.start_date,
                &row.end_date,
                &row.next_review,
                &row.status,
            ])?;
        }
    }
    writer
        .into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))
}

fn build_index(world: &World) -> std::io::Result<Index> {
    let mut index = Index::default();
    for (i, person) in world.people.iter().enumerate() {
        index.by_nhs.insert(person.nhs_number.clone(), i);
        index.by_nino.insert(person.nino.clone(), i);
        for (c, client) in person.council.iter().enumerate() {
            index.by_client.insert(client.client_id.clone(), (i, c));
        }
    }
    let csv = ilf_csv(world)?;
    index.ilf_etag = format!("\"{}\"", hex::encode(Sha256::digest(&csv)));
    index.ilf_csv = bytes::Bytes::from(csv);
    Ok(index)
}

fn start_one(partner: Partner, world: Arc<World>, index: Arc<Index>) -> std::io::Result<Sandbox> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let faults = Arc::new(Faults::default());
    let shared = faults.clone();
    let server: Server = HttpServer::new(move || {
        let state = web::Data::new(State {
            world: world.clone(),
            index: index.clone(),
            faults: shared.clone(),
        });
        let app = App::new().app_data(state);
        match partner {
            Partner::Council => app
                .route("/api/v1/clients", web::get().to(council_search))
                .route(
                    "/api/v1/clients/{id}/personal-budgets",
                    web::get().to(council_budgets),
                ),
            Partner::Ilf => app.route("/extracts/awards.csv", web::get().to(ilf_extract)),
            Partner::AccessToWork => {
                app.route("/atw/v2/claimants/{nino}/awards", web::get().to(atw_awards))
            }
            Partner::HealthBoard => {
                app.route("/phb/v1/patients/{nhs}/budgets", web::get().to(phb_budgets))
            }
        }
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok(Sandbox {
        partner,
        port,
        faults,
        handle,
    })
}

/// One request counted in [`Faults::in_flight`] until it is dropped (also when its client
/// goes away and the request is abandoned).
struct InFlight<'a>(&'a Faults);

impl<'a> InFlight<'a> {
    fn enter(faults: &'a Faults) -> Self {
        let now = faults.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        faults.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(faults)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Applies latency and any fault; `None` means answer normally.
async fn faulted(state: &State) -> Option<HttpResponse> {
    state.faults.hits.fetch_add(1, Ordering::SeqCst);
    let latency = state.faults.latency_ms.load(Ordering::SeqCst);
    {
        let _answering = InFlight::enter(&state.faults);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
    }
    match state.faults.take() {
        Fault::None => None,
        Fault::ServerError => Some(HttpResponse::InternalServerError().body("internal error")),
        Fault::TooManyRequests(secs) => Some(
            HttpResponse::TooManyRequests()
                .insert_header((header::RETRY_AFTER, secs.to_string()))
                .finish(),
        ),
        Fault::Malformed => Some(
            HttpResponse::Ok()
                .content_type("application/json")
                .body("{\"unexpected\": [1, 2"),
        ),
        Fault::Truncated => {
            let parts: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
                Ok(bytes::Bytes::from_static(b"{\"partial\": \"")),
                Err(std::io::Error::other("connection cut")),
            ];
            Some(
                HttpResponse::Ok()
                    .content_type("application/json")
                    .streaming(futures::stream::iter(parts)),
            )
        }
    }
}

fn bearer_ok(request: &HttpRequest, expected: &str) -> bool {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {expected}"))
}

fn unauthorised() -> HttpResponse {
    HttpResponse::Unauthorized().json(json!({ "error": "unauthorised" }))
}

#[derive(serde::Deserialize)]
struct Search {
    nhs_number: Option<String>,
}

async fn council_search(
    state: web::Data<State>,
    request: HttpRequest,
    query: web::Query<Search>,
) -> HttpResponse {
    if let Some(r) = faulted(&state).await {
        return r;
    }
    if !bearer_ok(&request, LA_TOKEN) {
        return unauthorised();
    }
    let clients: Vec<_> = query
        .nhs_number
        .as_ref()
        .and_then(|nhs| state.index.by_nhs.get(nhs))
        .and_then(|i| state.world.people.get(*i))
        .map(|p| p.council.iter().collect())
        .unwrap_or_default();
    HttpResponse::Ok().json(json!({ "clients": clients }))
}

async fn council_budgets(
    state: web::Data<State>,
    request: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    if let Some(r) = faulted(&state).await {
        return r;
    }
    if !bearer_ok(&request, LA_TOKEN) {
        return unauthorised();
    }
    let found = state.index.by_client.get(path.as_str()).and_then(|(p, c)| {
        state
            .world
            .people
            .get(*p)
            .and_then(|person| person.council.get(*c))
    });
    match found {
        Some(client) => HttpResponse::Ok().json(json!({
            "client_id": client.client_id,
            "council_code": client.council_code,
            "personal_budgets": client.personal_budgets,
        })),
        None => HttpResponse::NotFound().json(json!({ "error": "client_not_found" })),
    }
}

async fn ilf_extract(state: web::Data<State>, request: HttpRequest) -> HttpResponse {
    if let Some(r) = faulted(&state).await {
        return r;
    }
    let etag = &state.index.ilf_etag;
    let unchanged = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag);
    if unchanged {
        return HttpResponse::NotModified()
            .insert_header((header::ETAG, etag.clone()))
            .finish();
    }
    HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((header::ETAG, etag.clone()))
        .body(state.index.ilf_csv.clone())
}

fn person_by<'a>(
    state: &'a State,
    map: &HashMap<String, usize>,
    key: &str,
) -> Option<&'a SyntheticPerson> {
    map.get(key).and_then(|i| state.world.people.get(*i))
}

async fn atw_awards(
    state: web::Data<State>,
    request: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    if let Some(r) = faulted(&state).await {
        return r;
    }
    let key_ok = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == ATW_KEY);
    if !key_ok {
        return unauthorised();
    }
    match person_by(&state, &state.index.by_nino, &path).filter(|p| !p.atw_awards.is_empty()) {
        Some(person) => HttpResponse::Ok().json(json!({
            "nino": person.nino,
            "awards": person.atw_awards,
            "claims_paid": person.atw_claims,
        })),
        None => HttpResponse::NotFound().json(json!({ "error": "claimant_not_found" })),
    }
}

async fn phb_budgets(
    state: web::Data<State>,
    request: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    if let Some(r) = faulted(&state).await {
        return r;
    }
    if !bearer_ok(&request, PHB_TOKEN) {
        return unauthorised();
    }
    if connectors::identifiers::normalise_nhs_number(&path).is_err() {
        return HttpResponse::BadRequest().json(json!({ "error": "invalid_nhs_number" }));
    }
    match person_by(&state, &state.index.by_nhs, &path).filter(|p| !p.phb.is_empty()) {
        Some(person) => HttpResponse::Ok().json(json!({
            "nhs_number": person.nhs_number,
            "board_code": "QWU",
            "budgets": person.phb,
        })),
        None => HttpResponse::NotFound().json(json!({ "error": "patient_not_found" })),
    }
}
