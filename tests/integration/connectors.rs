//! The connectors against the partner sandboxes over real HTTP: every stream joined, the fault
//! matrix, a fifth stream added by configuration alone, and sync.

use std::time::{Duration, Instant};

use sandboxes::Fault;
use sandboxes::world::Case;
use serde_json::{Value, json};
use tributary::services::bulk::ExtractOutcome;
use tributary_tests::{
    Backend, TestApp, spawn_app, spawn_app_with, spawn_uncached_app, stream, warning_codes,
};

/// Live partners asked on every view, never tripping the breaker; the one under test fails
/// fast, the others keep a generous timeout so a busy machine cannot make them look faulty.
async fn spawn_uncached(faulty: &'static str) -> TestApp {
    spawn_app_with(Backend::Sqlite, move |s| {
        for c in &mut s.connectors {
            c.cache_ttl_secs = 0;
            c.breaker_threshold = 1000;
            if c.id.as_str() == faulty {
                c.timeout_ms = 2000;
                c.retry_budget_ms = 2500;
            }
        }
    })
    .await
}

fn status<'a>(budget: &'a Value, id: &str) -> &'a str {
    stream(budget, id)
        .and_then(|s| s["status"].as_str())
        .unwrap_or("ABSENT")
}

#[tokio::test]
async fn a_person_with_all_four_streams_sees_each_one_fresh() {
    let app = spawn_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    let budget = app.budget(&ids[0]).await;
    for id in ["la-social-care", "ilf", "access-to-work", "phb"] {
        assert_eq!(status(&budget, id), "FRESH", "{id}: {budget}");
    }
    assert_eq!(
        stream(&budget, "la-social-care").unwrap()["gross"]["amount"],
        "21508.93"
    );
    assert_eq!(
        stream(&budget, "la-social-care").unwrap()["contribution"]["amount"],
        "1835.43"
    );
    assert_eq!(
        stream(&budget, "la-social-care").unwrap()["net"]["amount"],
        "19673.50"
    );
    assert_eq!(
        stream(&budget, "ilf").unwrap()["gross"]["amount"],
        "14339.29"
    );
    let atw = stream(&budget, "access-to-work").unwrap();
    assert_eq!(
        atw["gross"]["amount"], "17300.00",
        "support worker + travel; the 2025 wheelchair is outside 2026-27"
    );
    assert_eq!(atw["spent"]["amount"], "1183.45");
    assert_eq!(
        stream(&budget, "phb").unwrap()["gross"]["amount"],
        "26000.00"
    );
    let source = &stream(&budget, "la-social-care").unwrap()["awards"][0]["source"];
    assert_eq!(source["connector"], "la-social-care");
    assert_eq!(source["upstreamId"], "PB-2026-0042");
    assert_eq!(source["version"], "7");
    assert_eq!(source["contentHash"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn a_person_known_to_one_stream_sees_only_that_stream() {
    let app = spawn_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    let i = app
        .world
        .people
        .iter()
        .position(|p| p.case == Case::OneStreamOnly)
        .unwrap();
    let budget = app.budget(&ids[i]).await;
    let present: Vec<&str> = budget["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["awards"].as_array().unwrap().is_empty())
        .map(|s| s["stream"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(present, ["access-to-work"]);
}

#[tokio::test]
async fn a_duplicate_council_record_is_reported_not_guessed() {
    let app = spawn_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    let i = app
        .world
        .people
        .iter()
        .position(|p| p.case == Case::DuplicateCouncilRecord)
        .unwrap();
    let budget = app.budget(&ids[i]).await;
    assert_eq!(
        warning_codes(&budget, "la-social-care"),
        ["AMBIGUOUS_MATCH"]
    );
    assert_eq!(
        stream(&budget, "la-social-care").unwrap()["awards"],
        json!([])
    );
    assert_eq!(
        stream(&budget, "la-social-care").unwrap()["gross"]["amount"],
        "0.00"
    );
}

#[tokio::test]
async fn a_suspended_award_is_listed_at_nothing() {
    let app = spawn_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    let i = app
        .world
        .people
        .iter()
        .position(|p| p.case == Case::SuspendedAward)
        .unwrap();
    let budget = app.budget(&ids[i]).await;
    let award = &stream(&budget, "ilf").unwrap()["awards"][0];
    assert_eq!(award["status"], "suspended");
    assert_eq!(award["amount"]["amount"], "1250.00");
    assert_eq!(award["entitlement"]["amount"], "0.00");
}

#[tokio::test]
async fn a_contribution_above_gross_warns_and_nets_to_zero() {
    let app = spawn_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    let i = app
        .world
        .people
        .iter()
        .position(|p| p.case == Case::ContributionAboveGross)
        .unwrap();
    let budget = app.budget(&ids[i]).await;
    let council = stream(&budget, "la-social-care").unwrap();
    assert_eq!(council["net"]["amount"], "0.00");
    assert!(
        warning_codes(&budget, "la-social-care").contains(&"CONTRIBUTION_EXCEEDS_GROSS".to_owned())
    );
}

/// The partners asked live, with how to find a person each knows (other than person 0).
fn live_partners(app: &TestApp) -> [(&'static str, &sandboxes::Sandbox, usize); 3] {
    let first_with = |f: &dyn Fn(&sandboxes::SyntheticPerson) -> bool| {
        app.world
            .people
            .iter()
            .skip(1)
            .position(f)
            .map(|i| i + 1)
            .unwrap()
    };
    [
        (
            "la-social-care",
            &app.sandboxes.council,
            first_with(&|p| p.council_client_id().is_some()),
        ),
        (
            "access-to-work",
            &app.sandboxes.access_to_work,
            first_with(&|p| !p.atw_awards.is_empty()),
        ),
        (
            "phb",
            &app.sandboxes.health_board,
            first_with(&|p| !p.phb.is_empty()),
        ),
    ]
}

async fn fault_matrix_for(partner: usize) {
    let app = spawn_uncached(["la-social-care", "access-to-work", "phb"][partner]).await;
    let ids = app.register_world().await;
    let (stream_id, sandbox, other) = live_partners(&app)[partner];
    // Person 0 is fetched once while the partner is well; `other` never is.
    let good = app.budget(&ids[0]).await;
    assert_eq!(status(&good, stream_id), "FRESH");
    let faults: [(&str, Option<Fault>, u64); 6] = [
        ("slow past the timeout", None, 5000),
        ("HTTP 500", Some(Fault::ServerError), 0),
        (
            "HTTP 429 with Retry-After",
            Some(Fault::TooManyRequests(5)),
            0,
        ),
        ("a malformed body", Some(Fault::Malformed), 0),
        ("a truncated body", Some(Fault::Truncated), 0),
        ("refused connections", None, 0),
    ];
    for (name, fault, latency) in faults {
        match (name, fault) {
            ("refused connections", _) => sandbox.stop().await,
            (_, Some(fault)) => sandbox.faults.set(fault),
            (_, None) => sandbox.faults.set_latency_ms(latency),
        }
        let stale = app.budget(&ids[0]).await;
        assert_eq!(status(&stale, stream_id), "STALE", "{stream_id}, {name}");
        assert!(
            warning_codes(&stale, stream_id).contains(&"SOURCE_STALE".to_owned()),
            "{stream_id}, {name}"
        );
        assert_eq!(
            stream(&stale, stream_id).unwrap()["gross"],
            stream(&good, stream_id).unwrap()["gross"],
            "the stale snapshot is served, {name}"
        );
        for other_stream in ["la-social-care", "ilf", "access-to-work", "phb"] {
            if other_stream != stream_id {
                assert_eq!(
                    status(&stale, other_stream),
                    "FRESH",
                    "{other_stream} while {stream_id} has {name}"
                );
            }
        }
        let unavailable = app.budget(&ids[other]).await;
        assert_eq!(
            status(&unavailable, stream_id),
            "UNAVAILABLE",
            "{stream_id}, {name}"
        );
        assert!(stream(&unavailable, stream_id).unwrap()["asOf"].is_null());
        assert!(warning_codes(&unavailable, stream_id).contains(&"SOURCE_UNAVAILABLE".to_owned()));
        sandbox.faults.clear();
    }
}

#[tokio::test]
async fn the_council_fault_matrix() {
    fault_matrix_for(0).await;
}

#[tokio::test]
async fn the_access_to_work_fault_matrix() {
    fault_matrix_for(1).await;
}

#[tokio::test]
async fn the_health_board_fault_matrix() {
    fault_matrix_for(2).await;
}

#[tokio::test]
async fn a_429_within_the_budget_is_waited_out_and_answered() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        for c in &mut s.connectors {
            c.cache_ttl_secs = 0;
            c.retry_budget_ms = 3000;
        }
    })
    .await;
    let ids = app.register_world().await;
    app.sandboxes
        .access_to_work
        .faults
        .set_for(Fault::TooManyRequests(1), 1);
    let started = Instant::now();
    let budget = app.budget(&ids[0]).await;
    assert_eq!(status(&budget, "access-to-work"), "FRESH");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was honoured"
    );
    assert_eq!(app.sandboxes.access_to_work.faults.hits(), 2);
}

#[tokio::test]
async fn a_dead_partner_opens_the_breaker_and_is_not_hammered() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        for c in &mut s.connectors {
            c.cache_ttl_secs = 0;
            c.max_attempts = 1;
            c.breaker_threshold = 2;
            c.breaker_cool_down_ms = 60_000;
        }
    })
    .await;
    let ids = app.register_world().await;
    app.sandboxes.health_board.faults.set(Fault::ServerError);
    for _ in 0..5 {
        let budget = app.budget(&ids[0]).await;
        assert_eq!(status(&budget, "phb"), "UNAVAILABLE");
    }
    assert_eq!(
        app.sandboxes.health_board.faults.hits(),
        2,
        "the breaker stopped the calls after two failures"
    );
}

#[tokio::test]
async fn the_ilf_before_its_first_extract_is_unavailable_and_a_bad_refresh_keeps_the_last() {
    let app = spawn_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    let ilf = app.registry.get("ilf").unwrap().clone();
    // The start-up load succeeded; now the fund fails.
    app.sandboxes.ilf.faults.set(Fault::ServerError);
    let outcome = tributary::services::bulk::sync_extract(&app.db, ilf.as_ref())
        .await
        .unwrap();
    assert!(matches!(outcome, ExtractOutcome::Failed(_)), "{outcome:?}");
    let budget = app.budget(&ids[0]).await;
    assert_eq!(
        stream(&budget, "ilf").unwrap()["gross"]["amount"],
        "14339.29"
    );

    // A hub that has never loaded the extract has nothing to show for the ILF.
    let cold = spawn_app_with(Backend::Sqlite, |s| {
        s.connectors.retain(|c| c.id.as_str() == "ilf");
        s.connectors[0].base_url = "http://127.0.0.1:9".into();
    })
    .await;
    let cold_ids = cold.register_world().await;
    let budget = cold.budget(&cold_ids[0]).await;
    assert_eq!(status(&budget, "ilf"), "UNAVAILABLE");
    assert!(warning_codes(&budget, "ilf").contains(&"SOURCE_UNAVAILABLE".to_owned()));
}

#[tokio::test]
async fn an_old_extract_is_served_stale() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        for c in &mut s.connectors {
            c.freshness_secs = 0;
        }
    })
    .await;
    let ids = app.register_world().await;
    let budget = app.budget(&ids[0]).await;
    assert_eq!(status(&budget, "ilf"), "STALE");
    assert!(warning_codes(&budget, "ilf").contains(&"SOURCE_STALE".to_owned()));
}

#[tokio::test]
async fn a_persons_partners_are_asked_at_once_not_one_after_another() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        for c in &mut s.connectors {
            c.cache_ttl_secs = 0;
            c.timeout_ms = 5000;
        }
    })
    .await;
    let ids = app.register_world().await;
    app.budget(&ids[0]).await;
    let latency = 1000;
    for sandbox in [
        &app.sandboxes.council,
        &app.sandboxes.access_to_work,
        &app.sandboxes.health_board,
    ] {
        sandbox.faults.set_latency_ms(latency);
    }
    let started = Instant::now();
    let budget = app.budget(&ids[0]).await;
    let elapsed = started.elapsed();
    assert_eq!(status(&budget, "phb"), "FRESH");
    assert!(elapsed >= Duration::from_millis(latency));
    assert!(
        elapsed < Duration::from_millis(5 * latency / 2),
        "three partners of {latency} ms took {elapsed:?}: they were asked one after another"
    );
}

/// Every live partner of `app` answers `latency_ms` late from now on, its peak of requests
/// in flight counted afresh.
fn slow_partners(app: &TestApp, latency_ms: u64) {
    for (_, sandbox, _) in live_partners(app) {
        sandbox.faults.set_latency_ms(latency_ms);
        sandbox.faults.reset_peak_in_flight();
    }
}

/// Asks a server with nothing cached (and `max_concurrency` on every connector, where given)
/// for `views` first views at once, of different people, every live partner `latency_ms`
/// away; answers the most requests the health board was answering at once.
async fn peak_at_the_partner(max_concurrency: Option<usize>, views: usize, latency_ms: u64) -> u64 {
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        for c in &mut s.connectors {
            c.cache_ttl_secs = 0;
            c.timeout_ms = 10_000;
            c.retry_budget_ms = 15_000;
            if let Some(limit) = max_concurrency {
                c.max_concurrency = limit;
            }
        }
    })
    .await;
    let ids = app.register_world().await;
    assert!(ids.len() >= views, "the world has {} people", ids.len());
    slow_partners(&app, latency_ms);
    let budgets = futures::future::join_all(ids.iter().take(views).map(|id| app.budget(id))).await;
    for budget in &budgets {
        assert!(budget["streams"].is_array(), "{budget}");
    }
    app.sandboxes.health_board.faults.peak_in_flight()
}

#[tokio::test]
async fn a_partner_is_never_asked_more_than_max_concurrency_at_once() {
    assert_eq!(peak_at_the_partner(Some(3), 8, 300).await, 3);
}

#[tokio::test]
async fn concurrent_first_views_are_not_held_back_by_the_default_limit() {
    // 24 views at once reach the partner at once: the default limit (64) does not queue them
    // a partner's round behind each other.
    assert_eq!(peak_at_the_partner(None, 24, 1000).await, 24);
}

#[tokio::test]
async fn a_fifth_stream_is_added_by_configuration_alone() {
    use actix_web::{App, HttpResponse, HttpServer, web};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(|| {
        App::new().route(
            "/housing/v1/people/{nino}/grants",
            web::get().to(|path: web::Path<String>, req: actix_web::HttpRequest| async move {
                if req.headers().get("x-housing-key").and_then(|v| v.to_str().ok()) != Some("housing-secret") {
                    return HttpResponse::Unauthorized().finish();
                }
                if path.as_str() != "AB123456C" {
                    return HttpResponse::NotFound().finish();
                }
                HttpResponse::Ok().json(json!({ "person": path.as_str(), "result": { "grants": [
                    { "grant_no": "DFG-2026-17", "award": { "gbp": "8500.00" }, "decided": "2026-06-01", "state": "APPROVED", "kind": "level_access_shower" },
                    { "grant_no": "DFG-2026-18", "award": { "gbp": "-5.00" }, "decided": "2026-06-01", "state": "APPROVED", "kind": "ramp" },
                    { "grant_no": "DFG-2025-02", "award": { "gbp": "1200.00" }, "decided": "2025-05-01", "state": "APPROVED", "kind": "stairlift" }
                ] } }))
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);

    let config = format!(
        r#"
[[connector]]
id = "housing-adaptations"
name = "Disabled Facilities Grant"
kind = "generic_rest"
base_url = "http://127.0.0.1:{port}"
path = "/housing/v1/people/{{value}}/grants"
identifier_scheme = "NINO"
auth_header = "X-Housing-Key"
api_key_env = "HOUSING_KEY"
[connector.mapping]
awards = "/result/grants"
id = "/grant_no"
amount = "/award/gbp"
fixed_frequency = "one_off"
payment_date = "/decided"
purpose = "/kind"
status = "/state"
status_map = {{ APPROVED = "active", CANCELLED = "paused" }}
"#
    );
    let extra = tributary::config::Settings::from_toml(&config)
        .unwrap()
        .connectors;
    let secrets = tributary::demo::sandbox_secrets().with("HOUSING_KEY", "housing-secret");
    let app = tributary_tests::spawn_app_with_secrets(
        Backend::Sqlite,
        move |s| s.connectors.extend(extra),
        secrets,
    )
    .await;
    let ids = app.register_world().await;
    // The key reaches the connector from the named variable; tests provide it in process.
    let budget = app.budget(&ids[0]).await;
    let housing = stream(&budget, "housing-adaptations").expect("the fifth stream is in the view");
    assert_eq!(housing["status"], "FRESH", "{budget}");
    assert_eq!(
        housing["gross"]["amount"], "8500.00",
        "the 2025 grant is outside 2026-27"
    );
    let award = &housing["awards"][0];
    assert_eq!(award["upstreamId"], "DFG-2026-17");
    assert_eq!(award["purpose"], "level_access_shower");
    assert_eq!(award["frequency"], "one_off");
    assert!(
        warning_codes(&budget, "housing-adaptations")
            .contains(&"UPSTREAM_DATA_REJECTED".to_owned())
    );
    let total: rust_decimal::Decimal = budget["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["gross"]["amount"]
                .as_str()
                .unwrap()
                .parse::<rust_decimal::Decimal>()
                .unwrap()
        })
        .sum();
    assert_eq!(budget["gross"]["amount"], format!("{total:.2}"));
}

#[tokio::test]
async fn sync_twice_reports_everything_unchanged_the_second_time() {
    let app = spawn_app(Backend::Sqlite).await;
    app.register_world().await;
    let noop = |_: u64, _: u64| {};
    let first = tributary::services::sync::run(&app.db, &app.registry, 8, &noop)
        .await
        .unwrap();
    assert_eq!(first.people, 60);
    assert_eq!(first.failed, 0);
    assert!(first.fetched > 60, "{first:?}");
    let second = tributary::services::sync::run(&app.db, &app.registry, 8, &noop)
        .await
        .unwrap();
    assert_eq!(second.fetched, 0, "{second:?}");
    assert_eq!(second.unchanged, first.fetched + first.unchanged);
    assert_eq!(second.failed, 0);
    assert_eq!(
        second.extracts,
        [("ilf".to_owned(), ExtractOutcome::Unchanged)]
    );
}

#[tokio::test]
async fn a_sync_refreshes_every_person_at_once_by_default() {
    // The 60 people of the world, each asked of the health board while it takes 300 ms to
    // answer: at the default concurrency all 60 are in flight together (at 16, the old
    // default, no more than 16 were).
    let app = spawn_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    slow_partners(&app, 300);
    let noop = |_: u64, _: u64| {};
    let report = tributary::services::sync::run(
        &app.db,
        &app.registry,
        tributary::services::sync::DEFAULT_CONCURRENCY,
        &noop,
    )
    .await
    .unwrap();
    assert_eq!(report.people, ids.len() as u64);
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(
        app.sandboxes.health_board.faults.peak_in_flight(),
        ids.len() as u64
    );
}

/// What a view asked of the budget service directly needs: an auditor asking for `purpose`,
/// the person `id`, and the financial year 2026-27.
async fn direct_view(
    app: &TestApp,
    id: &str,
    purpose: &str,
) -> (
    tributary::auth::Principal,
    tributary::services::persons::PersonRecord,
    tributary::budget::period::Window,
) {
    let auditor = tributary::auth::Principal {
        sub: "test-auditor".into(),
        role: tributary::auth::Role::Auditor,
        acts_for: Vec::new(),
        agency: None,
        purpose: Some(purpose.into()),
        request_id: "direct-view".into(),
    };
    let person = tributary::services::persons::get(&app.db, id)
        .await
        .unwrap();
    let window = tributary::budget::period::Window::parse_financial_year("2026-27").unwrap();
    (auditor, person, window)
}

/// The store as `DirectStore` reads it, except that it waits (until a deadline of ten seconds)
/// before two steps of a view: telling it what the view will read waits until every partner in
/// `partners` has been asked (and until `read_after` is notified, when given), and keeping the
/// view's answers waits until `recorded` is notified (when given; `kept_waiting` then says
/// whether the deadline passed).
struct WaitingStore<'a> {
    direct: tributary::services::sources::DirectStore<'a>,
    partners: Vec<&'a sandboxes::Faults>,
    before: Vec<u64>,
    read_after: Option<tokio::sync::Notify>,
    recorded: Option<tokio::sync::Notify>,
    kept_waiting: std::sync::atomic::AtomicBool,
}

impl<'a> WaitingStore<'a> {
    fn new(app: &'a TestApp) -> Self {
        Self {
            direct: tributary::services::sources::DirectStore(&app.db),
            partners: Vec::new(),
            before: Vec::new(),
            read_after: None,
            recorded: None,
            kept_waiting: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl tributary::services::sources::StoreReader for WaitingStore<'_> {
    async fn prepare(
        &self,
        _person_id: &str,
        _subjects: &[(String, String)],
    ) -> tributary::error::ApiResult<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        if let Some(read_after) = &self.read_after
            && tokio::time::timeout_at(deadline.into(), read_after.notified())
                .await
                .is_err()
        {
            return Err(tributary::error::ApiError::Internal(anyhow::anyhow!(
                "the read was not recorded while the store was read"
            )));
        }
        while self
            .partners
            .iter()
            .zip(&self.before)
            .any(|(partner, &before)| partner.hits() == before)
        {
            if Instant::now() > deadline {
                return Err(tributary::error::ApiError::Internal(anyhow::anyhow!(
                    "the partners were not asked while the store was read"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
    async fn store_snapshots(
        &self,
        db: &sea_orm::DatabaseConnection,
        fetched: &[(&str, &connectors::PersonRecords)],
    ) -> tributary::error::ApiResult<tributary::services::sources::Kept> {
        if let Some(recorded) = &self.recorded
            && tokio::time::timeout(Duration::from_secs(10), recorded.notified())
                .await
                .is_err()
        {
            self.kept_waiting
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        self.direct.store_snapshots(db, fetched).await
    }
    async fn snapshot(
        &self,
        connector: &str,
        subject_key: &str,
    ) -> tributary::error::ApiResult<
        Option<(
            connectors::PersonRecords,
            tributary::budget::assemble::SourceMeta,
        )>,
    > {
        self.direct.snapshot(connector, subject_key).await
    }
    async fn current_extract(
        &self,
        connector: &str,
    ) -> tributary::error::ApiResult<Option<entities::bulk_extract::Model>> {
        self.direct.current_extract(connector).await
    }
    async fn bulk_rows(
        &self,
        extract_id: &str,
        subject_key: &str,
    ) -> tributary::error::ApiResult<Vec<entities::bulk_record::Model>> {
        self.direct.bulk_rows(extract_id, subject_key).await
    }
    async fn rejected(
        &self,
        connector: &str,
        subject_key: &str,
    ) -> tributary::error::ApiResult<Vec<entities::rejected_record::Model>> {
        self.direct.rejected(connector, subject_key).await
    }
    async fn plan_items(
        &self,
        person_id: &str,
    ) -> tributary::error::ApiResult<Vec<tributary::services::plan::Item>> {
        self.direct.plan_items(person_id).await
    }
}

/// A partner asked on every view (`cache_ttl_secs = 0`) is asked while the store is read, not
/// after: its answer never waits on a read that could not have spared the call. A partner
/// whose snapshots may be young is still asked only after its snapshot was read.
#[tokio::test]
async fn partners_asked_on_every_view_are_asked_while_the_store_is_read() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        for c in &mut s.connectors {
            if c.id.as_str() != "phb" {
                c.cache_ttl_secs = 0;
            }
        }
    })
    .await;
    let ids = app.register_world().await;
    let (auditor, person, window) =
        direct_view(&app, &ids[0], "checking when partners are asked").await;
    // A first view stores the health board's snapshot, young from then on.
    app.budget(&ids[0]).await;
    let partners: Vec<&sandboxes::Faults> = vec![
        &app.sandboxes.council.faults,
        &app.sandboxes.access_to_work.faults,
    ];
    let store = WaitingStore {
        before: partners.iter().map(|p| p.hits()).collect(),
        partners,
        ..WaitingStore::new(&app)
    };
    let phb_before = app.sandboxes.health_board.faults.hits();
    let (budget, _) = tributary::services::budget::super_budget(
        &app.db,
        &store,
        &app.registry,
        &auditor,
        &person,
        window,
        None,
    )
    .await
    .unwrap();
    for stream in &budget.streams {
        assert_eq!(
            stream.status,
            tributary::budget::assemble::SourceStatus::Fresh,
            "{}",
            stream.id
        );
    }
    assert_eq!(budget.streams.len(), 4);
    // The health board's snapshot is young, so it is not asked.
    assert_eq!(app.sandboxes.health_board.faults.hits(), phb_before);
}

/// A view whose partners were asked records its read while it keeps their answers, not one
/// commit after the other; a view served from young snapshots leaves the recording to its
/// caller, once the view is ready. Both views are whole.
#[tokio::test]
async fn a_view_records_its_read_while_it_keeps_the_partners_answers() {
    use futures::FutureExt as _;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let app = spawn_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    let (auditor, person, window) =
        direct_view(&app, &ids[0], "checking when reads are recorded").await;
    let store = WaitingStore {
        recorded: Some(Default::default()),
        ..WaitingStore::new(&app)
    };
    let records = AtomicUsize::new(0);
    let record = || {
        async {
            records.fetch_add(1, Ordering::SeqCst);
            if let Some(recorded) = &store.recorded {
                recorded.notify_one();
            }
            Ok(())
        }
        .boxed()
    };
    let view = |record| {
        tributary::services::budget::super_budget(
            &app.db,
            &store,
            &app.registry,
            &auditor,
            &person,
            window,
            Some(record),
        )
    };

    // Nothing stored yet: the live partners are asked, and their answers kept.
    let (first, recorded) = view(record()).await.unwrap();
    assert!(
        recorded,
        "the read was recorded while the answers were kept"
    );
    assert!(
        !store.kept_waiting.load(Ordering::SeqCst),
        "keeping waited ten seconds: the read was not recorded while the answers were kept"
    );
    assert_eq!(records.load(Ordering::SeqCst), 1);
    assert_eq!(first.streams.len(), 4);
    for stream in &first.streams {
        assert_eq!(
            stream.status,
            tributary::budget::assemble::SourceStatus::Fresh,
            "{}",
            stream.id
        );
    }

    // Young snapshots: nobody is asked, nothing is kept, and the caller records the read.
    let (second, recorded) = view(record()).await.unwrap();
    assert!(!recorded);
    assert_eq!(
        records.load(Ordering::SeqCst),
        1,
        "the recording was left unrun"
    );
    assert_eq!(second.streams.len(), 4);
    assert_eq!(second.gross, first.gross);
}

/// A view that asks its partners on every view (`cache_ttl_secs = 0`) records its read while
/// it asks them and reads the store, not once they answered: here the store is read only once
/// the read is recorded. The view is whole, and its answers are kept.
#[tokio::test]
async fn an_uncached_view_records_its_read_while_it_asks_the_partners() {
    use futures::FutureExt as _;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let app = spawn_uncached_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    let (auditor, person, window) =
        direct_view(&app, &ids[0], "checking when reads are recorded").await;
    let store = WaitingStore {
        read_after: Some(Default::default()),
        ..WaitingStore::new(&app)
    };
    let records = AtomicUsize::new(0);
    let record = async {
        records.fetch_add(1, Ordering::SeqCst);
        if let Some(read_after) = &store.read_after {
            read_after.notify_one();
        }
        Ok(())
    }
    .boxed();
    let kept_before = app.count("upstream_snapshots").await;
    let (view, recorded) = tributary::services::budget::super_budget(
        &app.db,
        &store,
        &app.registry,
        &auditor,
        &person,
        window,
        Some(record),
    )
    .await
    .expect("the store was read only after the read was recorded");
    assert!(recorded, "the view recorded its read");
    assert_eq!(records.load(Ordering::SeqCst), 1);
    assert_eq!(view.streams.len(), 4);
    for stream in &view.streams {
        assert_eq!(
            stream.status,
            tributary::budget::assemble::SourceStatus::Fresh,
            "{}",
            stream.id
        );
    }
    assert_eq!(
        app.count("upstream_snapshots").await,
        kept_before + 3,
        "the three live partners' answers were kept"
    );
}

/// When the audit log refuses a view's read, recorded while its partners are asked (it asks
/// them on every view), nothing of the person leaves: not the budget, and not the fields read before it, whose
/// reads went unrecorded with it. Once the log takes reads again, so does the view.
#[tokio::test]
async fn a_view_whose_read_cannot_be_recorded_answers_nothing() {
    let app = spawn_uncached_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    let query = "query($id: ID!) { person(id: $id) { givenName familyName \
                 superBudget(financialYear: \"2026-27\") { net { amount } } } }";
    let token = app.person(&ids[0]);
    let before = app.count("audit_events").await;
    app.execute(
        "CREATE TRIGGER refuse_reads BEFORE INSERT ON audit_events \
         BEGIN SELECT RAISE(ABORT, 'the log is full'); END",
    )
    .await;
    let refused = app
        .gql_as(Some(&token), None, query, json!({ "id": ids[0] }))
        .await;
    assert_eq!(refused.status, 500, "{}", refused.body);
    assert!(refused.body["data"].is_null(), "{}", refused.body);
    let person: Value = app
        .scalar(format!(
            "SELECT json_array(given_name, family_name) FROM persons WHERE id = '{}'",
            ids[0]
        ))
        .await;
    for name in person.as_array().unwrap() {
        let name = name.as_str().unwrap();
        assert!(!refused.body.to_string().contains(name), "{}", refused.body);
    }
    assert_eq!(app.count("audit_events").await, before);

    app.execute("DROP TRIGGER refuse_reads").await;
    let served = app
        .gql_as(Some(&token), None, query, json!({ "id": ids[0] }))
        .await;
    assert!(served.data()["person"]["superBudget"]["net"]["amount"].is_string());
    assert_eq!(
        app.actions_for(&ids[0])
            .await
            .iter()
            .rev()
            .take(2)
            .collect::<Vec<_>>(),
        ["budget.read", "person.read"]
    );
}

/// An uncached view whose partners answer reads none of their stored snapshots before it
/// keeps the answers: a stored snapshot that could not even be decoded does not stand in its
/// way, and is replaced. A stored snapshot newer than the answer (by the partner's version)
/// still stands, and is what the view serves.
async fn an_uncached_view_reads_a_snapshot_only_when_it_stands(backend: Backend) {
    let app = spawn_uncached_app(backend).await;
    let ids = app.register_world().await;
    let first = app.budget(&ids[0]).await;
    assert_eq!(status(&first, "la-social-care"), "FRESH");
    let gross = |b: &Value| stream(b, "la-social-care").unwrap()["gross"]["amount"].clone();

    // A newer council snapshot than the partner will give (every amount with a 1 in front).
    app.execute(
        "UPDATE upstream_snapshots SET version = '999999', \
         records = replace(records, '\"amount\":\"', '\"amount\":\"1') \
         WHERE connector = 'la-social-care'",
    )
    .await;
    // A health board snapshot nobody can read.
    app.execute("UPDATE upstream_snapshots SET records = 'not json' WHERE connector = 'phb'")
        .await;

    let second = app.budget(&ids[0]).await;
    assert_eq!(status(&second, "phb"), "FRESH", "{backend:?}: {second}");
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM upstream_snapshots WHERE records = 'not json'")
            .await,
        0,
        "{backend:?}: the unreadable snapshot was replaced by the answer"
    );
    assert_eq!(status(&second, "la-social-care"), "FRESH");
    assert_ne!(
        gross(&second),
        gross(&first),
        "{backend:?}: the newer snapshot is served"
    );
    assert_eq!(
        app.scalar::<i64>(
            "SELECT count(*) FROM upstream_snapshots \
             WHERE connector = 'la-social-care' AND version = '999999'"
        )
        .await,
        1,
        "{backend:?}: the newer snapshot stands"
    );
}

tributary_tests::on_both_backends!(an_uncached_view_reads_a_snapshot_only_when_it_stands);

/// A view served from the store whose stored snapshot cannot be decoded: the person and their
/// other streams are still served from their snapshots, and the unreadable stream is asked of
/// its partner, whose answer replaces the damaged row. One damaged row used to fail the whole
/// budget with INTERNAL. On PostgreSQL the person and every view's rows come in one statement
/// (`pg_bundle`), which reads the damaged row as none, as the views' own reads do.
async fn a_served_view_with_an_unreadable_snapshot_asks_its_partner(backend: Backend) {
    let app = spawn_app(backend).await;
    let ids = app.register_world().await;
    let first = app.budget(&ids[0]).await;
    assert_eq!(status(&first, "phb"), "FRESH", "{backend:?}: {first}");
    let health_board = &app.sandboxes.health_board.faults;
    let asked_before = health_board.hits();
    app.execute("UPDATE upstream_snapshots SET records = 'not json' WHERE connector = 'phb'")
        .await;

    let second = app.budget(&ids[0]).await;
    assert_eq!(status(&second, "phb"), "FRESH", "{backend:?}: {second}");
    assert_eq!(
        stream(&second, "phb").unwrap()["gross"],
        stream(&first, "phb").unwrap()["gross"],
        "{backend:?}: the partner's answer is served"
    );
    assert_eq!(
        health_board.hits(),
        asked_before + 1,
        "{backend:?}: the health board was asked again"
    );
    assert_eq!(
        status(&second, "la-social-care"),
        "FRESH",
        "{backend:?}: {second}"
    );
    assert_eq!(
        app.scalar::<i64>("SELECT count(*) FROM upstream_snapshots WHERE records = 'not json'")
            .await,
        0,
        "{backend:?}: the damaged snapshot was replaced by the answer"
    );
}

tributary_tests::on_both_backends!(a_served_view_with_an_unreadable_snapshot_asks_its_partner);

/// Returns once a session of the app's PostgreSQL database waits on a lock, `task` still
/// running; fails if the task ends first or nothing waits within a minute.
async fn until_a_session_waits_on_a_lock<T>(app: &TestApp, task: &tokio::task::JoinHandle<T>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 = app
            .scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .await;
        if waiting > 0 {
            return;
        }
        assert!(!task.is_finished(), "it finished without waiting on a lock");
        assert!(
            Instant::now() < deadline,
            "nothing waited on a lock within a minute"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Two loads of one extract that overlap on PostgreSQL (the server's refresher and a
/// `tributary sync`, say) leave one extract current, and the other's rows gone. Here the other
/// load is this test's own transaction, caught in its swap: it holds the swap's lock, has its
/// extract (a copy of the rows) in as current, and holds the old extract's row. The hub's load
/// is let go on once it waits for it. Before the swaps took turns, its DELETE of the old
/// extracts began before the other committed and missed the other's extract: both stayed
/// current (this test failed with 2), and a view served one or the other.
#[tokio::test]
async fn on_postgres_overlapping_loads_of_an_extract_leave_one_current() {
    use sea_orm::{ConnectionTrait, Database, Statement, TransactionTrait};

    let app = spawn_app(Backend::Postgres).await;
    let ids = app.register_world().await;
    let ilf_gross = |budget: &Value| stream(budget, "ilf").unwrap()["gross"]["amount"].clone();
    let before = ilf_gross(&app.budget(&ids[0]).await);
    assert_eq!(before, "14339.29");
    // The stored extract no longer matches the fund's file, so the hub loads it again.
    app.execute("UPDATE bulk_extracts SET etag = NULL, content_hash = repeat('0', 64)")
        .await;
    let old: String = app
        .scalar("SELECT id FROM bulk_extracts WHERE connector = 'ilf' AND current")
        .await;

    let other = Database::connect(app.database_url.as_str()).await.unwrap();
    let swap = other.begin().await.unwrap();
    swap.execute_raw(Statement::from_sql_and_values(
        sea_orm::DatabaseBackend::Postgres,
        tributary::services::bulk::EXTRACT_SWAP_LOCK,
        ["ilf".into()],
    ))
    .await
    .unwrap();
    swap.execute_unprepared(&format!(
        "SELECT id FROM bulk_extracts WHERE id = '{old}' FOR UPDATE;
         INSERT INTO bulk_extracts (id, connector, etag, content_hash, row_count, rejected_count, \
         current, loaded_at) VALUES ('other-load', 'ilf', NULL, repeat('1', 64), 0, 0, true, now());
         INSERT INTO bulk_records (extract_id, connector, subject_key, upstream_id, record, \
         content_hash) SELECT 'other-load', connector, subject_key, upstream_id, record, \
         content_hash FROM bulk_records WHERE extract_id = '{old}';"
    ))
    .await
    .unwrap();

    let (db, ilf) = (app.db.clone(), app.registry.get("ilf").unwrap().clone());
    let load =
        tokio::spawn(
            async move { tributary::services::bulk::sync_extract(&db, ilf.as_ref()).await },
        );
    // The hub's load downloads and inserts the file, then waits on a lock the other holds.
    until_a_session_waits_on_a_lock(&app, &load).await;
    swap.commit().await.unwrap();
    let outcome = load.await.unwrap().unwrap();
    assert!(
        matches!(outcome, ExtractOutcome::Loaded { .. }),
        "{outcome:?}"
    );

    let current: i64 = app
        .scalar("SELECT count(*) FROM bulk_extracts WHERE connector = 'ilf' AND current")
        .await;
    assert_eq!(current, 1, "one extract is current");
    assert_eq!(app.count("bulk_extracts").await, 1, "the others are gone");
    let orphans: i64 = app
        .scalar(
            "SELECT count(*) FROM bulk_records r JOIN bulk_extracts e ON e.id = r.extract_id \
             WHERE NOT e.current",
        )
        .await;
    assert_eq!(orphans, 0);
    assert_eq!(ilf_gross(&app.budget(&ids[0]).await), before);
}

/// On PostgreSQL a snapshot stored through the pool's transaction (a `tributary sync`'s
/// batches, or a view's fallback) does not replace a newer one that another session commits
/// after the transaction read the stored versions. Here the other session is this test's
/// own: it has the newer version written, uncommitted, when the older answer is stored, and
/// commits once the store waits on its row. Before the write checked the row as it stands,
/// the older answer replaced it (this test found version 6 stored).
#[tokio::test]
async fn on_postgres_an_older_answer_stored_in_a_batch_never_replaces_a_newer_snapshot() {
    use connectors::PersonRecords;
    use sea_orm::{ConnectionTrait, Database, TransactionTrait};
    use tributary::services::sources::store_snapshots;

    let app = spawn_app(Backend::Postgres).await;
    let answer = |version: &str| PersonRecords {
        subject_key: "NHS_NUMBER:9434765919".into(),
        version: Some(version.into()),
        ..PersonRecords::default()
    };
    store_snapshots(&app.db, &[("la-social-care", &answer("5"))])
        .await
        .unwrap();
    let stored = || {
        app.scalar::<String>(
            "SELECT version FROM upstream_snapshots \
             WHERE connector = 'la-social-care' AND subject_key = 'NHS_NUMBER:9434765919'",
        )
    };
    assert_eq!(stored().await, "5");

    let other = Database::connect(app.database_url.as_str()).await.unwrap();
    let newer = other.begin().await.unwrap();
    newer
        .execute_unprepared(
            "UPDATE upstream_snapshots SET version = '7', content_hash = repeat('7', 64) \
             WHERE connector = 'la-social-care' AND subject_key = 'NHS_NUMBER:9434765919'",
        )
        .await
        .unwrap();

    let db = app.db.clone();
    let older = answer("6");
    let store =
        tokio::spawn(async move { store_snapshots(&db, &[("la-social-care", &older)]).await });
    // The store reads version 5 (7 is not committed), then waits on the row to write 6.
    until_a_session_waits_on_a_lock(&app, &store).await;
    newer.commit().await.unwrap();
    store.await.unwrap().unwrap();
    assert_eq!(stored().await, "7", "the newer snapshot stays");
}
