//! The combined budget over HTTP: figures recomputed independently from the partners' own
//! payloads, split funding, the trace, warnings, and concurrent plan edits.

use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use sandboxes::world::Case;
use serde_json::{Value, json};
use tributary_tests::{Backend, TestApp, spawn_app, spawn_uncached_app, stream, warning_codes};

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(
        v.as_str()
            .unwrap_or_else(|| panic!("not a decimal string: {v}")),
    )
    .unwrap()
}

fn round(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven)
}

async fn get_json(app: &TestApp, url: String, header: (&str, String)) -> Value {
    app.client
        .get(url)
        .header(header.0, header.1)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Person 0's 2026-27 gross per stream, worked out here from what the partners publish,
/// with none of the hub's code: every award of person 0 is active all year (365 days) or is
/// a one-off, so each figure is a single multiplication rounded once.
async fn expected_from_payloads(app: &TestApp) -> [(&'static str, Decimal, Decimal); 4] {
    let days = Decimal::from(365);
    let council = get_json(
        app,
        format!(
            "{}/api/v1/clients/CL-104233/personal-budgets",
            app.sandboxes.council.url()
        ),
        (
            "authorization",
            format!("Bearer {}", sandboxes::servers::LA_TOKEN),
        ),
    )
    .await;
    let budget = &council["personal_budgets"][0];
    assert_eq!(budget["frequency"], "weekly");
    let council_gross = round(dec(&budget["gross_amount"]) * days / Decimal::from(7));
    let council_contribution = round(dec(&budget["client_contribution"]) * days / Decimal::from(7));

    let csv = app
        .client
        .get(format!("{}/extracts/awards.csv", app.sandboxes.ilf.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let row = csv.lines().find(|l| l.contains("AB123456C")).unwrap();
    let amount = row.split(',').nth(4).unwrap();
    let ilf_gross = round(Decimal::from_str(amount).unwrap() * days / Decimal::from(28));

    let atw = get_json(
        app,
        format!(
            "{}/atw/v2/claimants/AB123456C/awards",
            app.sandboxes.access_to_work.url()
        ),
        ("x-api-key", sandboxes::servers::ATW_KEY.to_owned()),
    )
    .await;
    let mut atw_gross = Decimal::ZERO;
    for element in atw["awards"][0]["elements"].as_array().unwrap() {
        if let Some(annual) = element.get("annual_amount") {
            atw_gross += dec(annual);
        } else {
            let paid = element["payment_date"].as_str().unwrap();
            if ("2026-04-01".."2027-04-01").contains(&paid) {
                atw_gross += dec(&element["one_off_amount"]);
            }
        }
    }

    let phb = get_json(
        app,
        format!(
            "{}/phb/v1/patients/9434765919/budgets",
            app.sandboxes.health_board.url()
        ),
        (
            "authorization",
            format!("Bearer {}", sandboxes::servers::PHB_TOKEN),
        ),
    )
    .await;
    let phb_gross = dec(&phb["budgets"][0]["annual_amount"]);
    [
        ("la-social-care", council_gross, council_contribution),
        ("ilf", ilf_gross, Decimal::ZERO),
        ("access-to-work", atw_gross, Decimal::ZERO),
        ("phb", phb_gross, Decimal::ZERO),
    ]
}

#[tokio::test]
async fn the_four_stream_persons_totals_match_an_independent_recomputation() {
    let app = spawn_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    let budget = app.budget(&ids[0]).await;
    let expected = expected_from_payloads(&app).await;
    let (mut gross, mut net) = (Decimal::ZERO, Decimal::ZERO);
    for (id, g, c) in expected {
        let s = stream(&budget, id).unwrap();
        assert_eq!(dec(&s["gross"]["amount"]), g, "{id}");
        assert_eq!(dec(&s["contribution"]["amount"]), c, "{id}");
        gross += g;
        net += (g - c).max(Decimal::ZERO);
    }
    assert_eq!(dec(&budget["gross"]["amount"]), gross);
    assert_eq!(dec(&budget["net"]["amount"]), net);
    assert_eq!(budget["gross"]["amount"], "79148.22");
    // Purposes add up to gross exactly, and lines to their award.
    let purposes: Decimal = budget["purposes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| dec(&p["gross"]["amount"]))
        .sum();
    assert_eq!(purposes, gross);
    let council_award = &stream(&budget, "la-social-care").unwrap()["awards"][0];
    let lines: Decimal = council_award["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| dec(&l["entitlement"]["amount"]))
        .sum();
    assert_eq!(lines, dec(&council_award["entitlement"]["amount"]));
    // Every amount on the wire has exactly two places.
    for s in budget["streams"].as_array().unwrap() {
        for field in [
            "gross",
            "contribution",
            "net",
            "committed",
            "spent",
            "remaining",
        ] {
            let text = s[field]["amount"].as_str().unwrap();
            assert_eq!(
                text.split('.').nth(1).map(str::len),
                Some(2),
                "{field}: {text}"
            );
        }
    }
}

const ADD: &str = "mutation($input: PlanItemInput!) { addPlanItem(input: $input) {
  id description cost { amount } frequency shares { stream { id } percent amount { amount }
    award { id upstreamId } source { connector upstreamId version fetchedAt contentHash } } } }";

const UPDATE: &str = "mutation($input: UpdatePlanItemInput!) { updatePlanItem(input: $input) { id description version shares { amount { amount } } } }";

fn wheelchair(person: &str, shares: Value) -> Value {
    json!({ "input": {
        "personId": person, "description": "Powered wheelchair, used at home and at work",
        "purpose": "mobility", "cost": "3000.00", "frequency": "one_off", "startDate": "2026-07-20",
        "shares": shares
    }})
}

#[tokio::test]
async fn a_split_item_shows_in_both_streams_and_traces_to_the_upstream_records() {
    let app = spawn_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    let i = app
        .world
        .people
        .iter()
        .position(|p| p.case == Case::SharedWheelchair)
        .unwrap();
    let person = &ids[i];
    let atw_ref = &app.world.people[i].atw_awards[0].award_ref;
    let phb_ref = &app.world.people[i].phb[0].budget_id;
    let token = app.person(person);
    // The view first, so the snapshots the trace points at exist.
    let before = app.budget(person).await;
    let atw_award = format!("access-to-work:{atw_ref}/special_aids_and_equipment");
    let phb_award = format!("phb:{phb_ref}");
    let response = app
        .gql_as(
            Some(&token),
            None,
            ADD,
            wheelchair(
                person,
                json!([
                    { "streamId": "access-to-work", "percent": "60", "awardId": atw_award },
                    { "streamId": "phb", "percent": "40", "awardId": phb_award },
                ]),
            ),
        )
        .await;
    let item = &response.data()["addPlanItem"];
    assert_eq!(item["shares"][0]["amount"]["amount"], "1800.00");
    assert_eq!(item["shares"][1]["amount"]["amount"], "1200.00");
    assert_eq!(item["shares"][0]["percent"], "60.00");
    assert_eq!(
        item["shares"][0]["award"]["upstreamId"],
        format!("{atw_ref}/special_aids_and_equipment")
    );
    let atw_source = &item["shares"][0]["source"];
    assert_eq!(atw_source["connector"], "access-to-work");
    let atw_stream_before = stream(&before, "access-to-work").unwrap();
    assert_eq!(
        atw_source["contentHash"],
        atw_stream_before["awards"][1]["source"]["contentHash"]
    );
    assert_eq!(item["shares"][1]["source"]["upstreamId"], phb_ref.as_str());

    let after = app.budget(person).await;
    for (id, committed) in [("access-to-work", "1800.00"), ("phb", "1200.00")] {
        let s = stream(&after, id).unwrap();
        assert_eq!(s["committed"]["amount"], committed, "{id}");
        assert_eq!(
            dec(&s["remaining"]["amount"]),
            dec(&s["net"]["amount"]) - dec(&s["committed"]["amount"])
        );
    }
    assert_eq!(after["committed"]["amount"], "3000.00");

    // From the award back to the item that draws on it.
    let back = app
        .gql_as(
            Some(&token),
            None,
            "query($id: ID!) { person(id: $id) { superBudget { streams { stream { id } awards { id planItems { id } } } } } }",
            json!({ "id": person }),
        )
        .await;
    let awards: Vec<&Value> = back.data()["person"]["superBudget"]["streams"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["awards"].as_array().unwrap())
        .collect();
    let funded = awards
        .iter()
        .find(|a| a["id"] == atw_award.as_str())
        .unwrap();
    assert_eq!(funded["planItems"][0]["id"], item["id"]);

    // The same trace as CSV for auditors.
    let csv = app
        .gql_as(
            Some(&token),
            None,
            "query($id: ID!) { person(id: $id) { traceCsv(financialYear: \"2026-27\") } }",
            json!({ "id": person }),
        )
        .await;
    let text = csv.data()["person"]["traceCsv"].as_str().unwrap();
    assert!(text.starts_with("kind,window_from,window_to,stream,award_id,upstream_id"));
    let share_rows: Vec<&str> = text.lines().filter(|l| l.starts_with("share,")).collect();
    assert_eq!(share_rows.len(), 2);
    assert!(
        share_rows[0].contains(&format!("{atw_ref}/special_aids_and_equipment"))
            && share_rows[0].ends_with(",60.00,1800.00")
    );
    assert!(share_rows[1].contains(phb_ref.as_str()) && share_rows[1].ends_with(",40.00,1200.00"));
}

#[tokio::test]
async fn percentages_become_pennies_by_largest_remainder() {
    let app = spawn_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    let token = app.person(&ids[0]);
    let mut input = wheelchair(
        &ids[0],
        json!([
            { "streamId": "la-social-care", "percent": "33.33" },
            { "streamId": "ilf", "percent": "33.33" },
            { "streamId": "phb", "percent": "33.34" },
        ]),
    );
    input["input"]["cost"] = json!("10.00");
    let r = app.gql_as(Some(&token), None, ADD, input).await;
    let amounts: Vec<&str> = r.data()["addPlanItem"]["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["amount"]["amount"].as_str().unwrap())
        .collect();
    assert_eq!(amounts, ["3.33", "3.33", "3.34"]);

    let mut input = wheelchair(
        &ids[0],
        json!([
            { "streamId": "la-social-care", "percent": "50" },
            { "streamId": "phb", "percent": "50" },
        ]),
    );
    input["input"]["cost"] = json!("100.01");
    let r = app.gql_as(Some(&token), None, ADD, input).await;
    let amounts: Vec<&str> = r.data()["addPlanItem"]["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["amount"]["amount"].as_str().unwrap())
        .collect();
    assert_eq!(amounts, ["50.01", "50.00"]);
}

#[tokio::test]
async fn shares_that_do_not_add_up_are_refused_with_the_sum_found() {
    let app = spawn_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    let token = app.person(&ids[0]);
    let cases = [
        (
            json!([{ "streamId": "phb", "percent": "60" }, { "streamId": "ilf", "percent": "39.99" }]),
            "sum to 99.99, not 100",
        ),
        (
            json!([{ "streamId": "phb", "amount": "1000.00" }, { "streamId": "ilf", "amount": "1999.99" }]),
            "sum to 2999.99, not the cost 3000.00",
        ),
        (
            json!([{ "streamId": "phb", "amount": "1000.00" }, { "streamId": "ilf", "percent": "50" }]),
            "never both",
        ),
        (
            json!([{ "streamId": "phb", "amount": "1000.00", "percent": "50" }]),
            "exactly one of percent and amount",
        ),
        (
            json!([{ "streamId": "housing", "percent": "100" }]),
            "unknown stream",
        ),
        (json!([]), "at least one"),
        (
            json!([{ "streamId": "phb", "percent": "100", "awardId": "ilf:ILF-000317" }]),
            "not one of stream 'phb'",
        ),
    ];
    for (shares, hint) in cases {
        let r = app
            .gql_as(Some(&token), None, ADD, wheelchair(&ids[0], shares))
            .await;
        assert_eq!(r.code(), Some("BAD_USER_INPUT"), "{hint}: {}", r.body);
        assert!(r.message().contains(hint), "{hint}: {}", r.message());
    }
    assert_eq!(app.count("plan_items").await, 0);
    assert_eq!(app.count("funding_shares").await, 0);
}

#[tokio::test]
async fn a_retried_add_with_the_same_idempotency_key_adds_once() {
    let app = spawn_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    let token = app.person(&ids[0]);
    let mut input = wheelchair(&ids[0], json!([{ "streamId": "phb", "percent": "100" }]));
    input["input"]["idempotencyKey"] = json!("retry-me-1");
    let first = app.gql_as(Some(&token), None, ADD, input.clone()).await;
    let second = app.gql_as(Some(&token), None, ADD, input).await;
    assert_eq!(
        first.data()["addPlanItem"]["id"],
        second.data()["addPlanItem"]["id"]
    );
    assert_eq!(app.count("plan_items").await, 1);
}

#[tokio::test]
async fn concurrent_edits_of_one_item_one_wins_the_other_conflicts() {
    let app = spawn_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    let token = app.person(&ids[0]);
    let added = app
        .gql_as(
            Some(&token),
            None,
            ADD,
            wheelchair(&ids[0], json!([{ "streamId": "phb", "percent": "100" }])),
        )
        .await;
    let item = added.data()["addPlanItem"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let edit = |description: &str, cost: &str| {
        json!({ "input": { "id": item, "expectedVersion": 1, "description": description, "purpose": "mobility",
            "cost": cost, "frequency": "one_off", "startDate": "2026-07-20",
            "shares": [{ "streamId": "phb", "percent": "100" }] } })
    };
    let (a, b) = tokio::join!(
        app.gql_as(Some(&token), None, UPDATE, edit("Edit A", "3100.00")),
        app.gql_as(Some(&token), None, UPDATE, edit("Edit B", "3200.00")),
    );
    let outcomes = [&a, &b];
    let won: Vec<_> = outcomes
        .iter()
        .filter(|r| r.body.get("errors").is_none())
        .collect();
    let lost: Vec<_> = outcomes
        .iter()
        .filter(|r| r.code() == Some("CONFLICT"))
        .collect();
    assert_eq!((won.len(), lost.len()), (1, 1), "{a:?} {b:?}");
    assert!(lost[0].message().contains("changed by someone else"));
    let winner = won[0].data()["updatePlanItem"]["description"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(won[0].data()["updatePlanItem"]["version"], 2);
    let plan = app
        .gql_as(Some(&token), None, "query($id: ID!) { person(id: $id) { supportPlan { description version shares { amount { amount } } } } }", json!({ "id": ids[0] }))
        .await;
    let stored = &plan.data()["person"]["supportPlan"][0];
    assert_eq!(stored["description"], winner.as_str());
    assert_eq!(stored["version"], 2);
    assert_eq!(stored["shares"].as_array().unwrap().len(), 1);
    // The loser can re-read and apply its change on the new version.
    let mut retry = edit("Edit again", "3300.00");
    retry["input"]["expectedVersion"] = json!(2);
    let retried = app.gql_as(Some(&token), None, UPDATE, retry).await;
    assert_eq!(retried.data()["updatePlanItem"]["version"], 3);
}

#[tokio::test]
async fn over_commitment_and_double_funding_are_warned_against_their_stream_and_items() {
    let app = spawn_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    let token = app.person(&ids[0]);
    let phb_award = "phb:PHB-55";
    let mut big = wheelchair(
        &ids[0],
        json!([{ "streamId": "phb", "amount": "20000.00", "awardId": phb_award }]),
    );
    big["input"]["cost"] = json!("20000.00");
    let first = app.gql_as(Some(&token), None, ADD, big.clone()).await;
    let second = app.gql_as(Some(&token), None, ADD, big).await;
    let budget = app.budget(&ids[0]).await;
    let codes = warning_codes(&budget, "phb");
    assert!(codes.contains(&"OVER_COMMITTED".to_owned()), "{codes:?}");
    let double: Vec<&Value> = budget["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["code"] == "DOUBLE_FUNDED")
        .collect();
    let items: Vec<&Value> = double.iter().map(|w| &w["itemId"]).collect();
    assert_eq!(items.len(), 2);
    assert!(items.contains(&&first.data()["addPlanItem"]["id"]));
    assert!(items.contains(&&second.data()["addPlanItem"]["id"]));
    assert_eq!(
        stream(&budget, "phb").unwrap()["remaining"]["amount"],
        "-14000.00"
    );
}

#[tokio::test]
async fn a_review_within_42_days_or_past_is_warned() {
    let app = spawn_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    // Person 0's health budget was due for review on 2026-10-01, before today.
    let budget = app.budget(&ids[0]).await;
    assert!(warning_codes(&budget, "phb").contains(&"REVIEW_DUE".to_owned()));
}

#[tokio::test]
async fn a_window_is_a_financial_year_or_from_and_to() {
    let app = spawn_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    let token = app.person(&ids[0]);
    let q = "query($id: ID!, $fy: String, $from: Date, $to: Date) { person(id: $id) { superBudget(financialYear: $fy, from: $from, to: $to) { from to gross { amount } } } }";
    let half = app
        .gql_as(
            Some(&token),
            None,
            q,
            json!({ "id": ids[0], "from": "2026-04-01", "to": "2026-09-30" }),
        )
        .await;
    let b = &half.data()["person"]["superBudget"];
    assert_eq!(
        (b["from"].as_str(), b["to"].as_str()),
        (Some("2026-04-01"), Some("2026-09-30"))
    );
    for bad in [
        json!({ "id": ids[0], "fy": "2026-28" }),
        json!({ "id": ids[0], "from": "2026-04-01" }),
        json!({ "id": ids[0], "fy": "2026-27", "from": "2026-04-01", "to": "2026-05-01" }),
        json!({ "id": ids[0], "from": "2026-05-01", "to": "2026-04-01" }),
    ] {
        let r = app.gql_as(Some(&token), None, q, bad.clone()).await;
        assert_eq!(r.code(), Some("BAD_USER_INPUT"), "{bad}");
    }
}

#[tokio::test]
async fn a_query_text_that_passed_validation_still_refuses_bad_variables() {
    let app = spawn_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    let token = app.person(&ids[0]);
    let q = "query($id: ID!, $from: Date, $to: Date) { person(id: $id) { superBudget(from: $from, to: $to) { gross { amount } } } }";
    let bad = [
        json!({ "id": ids[0], "from": "2026-02-30", "to": "2026-09-30" }),
        json!({ "id": ids[0], "from": 20260401, "to": "2026-09-30" }),
        json!({ "id": { "x": 1 }, "from": "2026-04-01", "to": "2026-09-30" }),
    ];
    // Before the text has passed the full rules, they refuse a value of the wrong type for
    // its argument before anything runs (an error of the request, naming no field).
    let first = app.gql_as(Some(&token), None, q, bad[2].clone()).await;
    assert_eq!(first.code(), Some("BAD_USER_INPUT"), "{}", first.body);
    assert!(first.body["data"].is_null(), "{}", first.body);
    assert!(first.body["errors"][0]["path"].is_null(), "{}", first.body);
    let good = json!({ "id": ids[0], "from": "2026-04-01", "to": "2026-09-30" });
    let answered = app.gql_as(Some(&token), None, q, good).await;
    assert!(answered.data()["person"]["superBudget"]["gross"]["amount"].is_string());
    // After it, the rules are not run again, and the field that reads a bad value refuses it:
    // the error names that field, and nothing of the person's is answered.
    for variables in bad {
        let r = app.gql_as(Some(&token), None, q, variables.clone()).await;
        assert_eq!(r.code(), Some("BAD_USER_INPUT"), "{variables}: {}", r.body);
        assert!(
            r.body["errors"][0]["path"][0].is_string(),
            "{variables}: the rules ran again: {}",
            r.body
        );
        assert!(
            r.body["data"].is_null() || r.body["data"]["person"].is_null(),
            "{variables}: {}",
            r.body
        );
    }
}

/// Queries one request costs: the page of people, each with budget and plan.
async fn queries_for_page(app: &TestApp, first: usize) -> u64 {
    let auditor = app.token("test-auditor", tributary::auth::Role::Auditor);
    let before = app.queries.load(std::sync::atomic::Ordering::SeqCst);
    let response = app
        .gql_as(
            Some(&auditor),
            Some("caseload audit"),
            "query($first: Int) { people(first: $first) { edges { node { id superBudget { gross { amount } streams { status awards { id } } } supportPlan { id shares { amount { amount } } } } } } }",
            json!({ "first": first }),
        )
        .await;
    let edges = response.data()["people"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), first);
    assert!(edges.iter().all(|e| {
        e["node"]["superBudget"]["streams"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "FRESH")
    }));
    app.queries.load(std::sync::atomic::Ordering::SeqCst) - before
}

/// The demo world on `backend` with a plan item for the first person (drawing on phb), and
/// every partner's answers stored by a sync. Returns the app and the people's ids.
async fn synced_world_with_a_plan(backend: Backend) -> (TestApp, Vec<String>) {
    let app = spawn_app(backend).await;
    let ids = app.register_world().await;
    let token = app.person(&ids[0]);
    app.gql_as(
        Some(&token),
        None,
        ADD,
        wheelchair(&ids[0], json!([{ "streamId": "phb", "percent": "100" }])),
    )
    .await
    .data();
    let noop = |_: u64, _: u64| {};
    tributary::services::sync::run(&app.db, &app.registry, 8, &noop)
        .await
        .unwrap();
    (app, ids)
}

#[tokio::test]
async fn many_peoples_budgets_cost_a_fixed_number_of_queries() {
    // Every snapshot stored and young, so no partner is asked during the count.
    let (app, _) = synced_world_with_a_plan(Backend::Sqlite).await;
    let few = queries_for_page(&app, 5).await;
    let many = queries_for_page(&app, 50).await;
    // Unbatched, each person costs about eight queries (400 for 50). Batched, the count does
    // not grow with the page; a loader batch split by scheduling may add a few.
    assert!(
        many <= few + 8,
        "5 people cost {few} queries, 50 cost {many}: the reads are not batched"
    );
    assert!(many < 40, "{many} queries for a page of 50 budgets");
}

#[tokio::test]
async fn a_stream_past_its_yearly_cap_is_warned() {
    let app = tributary_tests::spawn_app_with(Backend::Sqlite, |s| {
        for c in &mut s.connectors {
            if c.id.as_str() == "access-to-work" {
                c.yearly_cap = Some(Decimal::new(1_000_000, 2));
            }
        }
    })
    .await;
    let ids = app.register_world().await;
    let budget = app.budget(&ids[0]).await;
    let warning = budget["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["code"] == "CAP_EXCEEDED")
        .expect("a CAP_EXCEEDED warning");
    assert_eq!(warning["streamId"], "access-to-work");
    assert!(
        warning["message"].as_str().unwrap().contains("17300.00"),
        "{warning}"
    );
    assert!(
        warning["message"].as_str().unwrap().contains("10000.00"),
        "{warning}"
    );
    // At the configured 69260.00 the same awards are within the cap.
    let normal = spawn_app(Backend::Sqlite).await;
    let ids = normal.register_world().await;
    assert!(
        !warning_codes(&normal.budget(&ids[0]).await, "access-to-work")
            .contains(&"CAP_EXCEEDED".to_owned())
    );
}

/// A row of the ILF extract that fails validation is left out of the person's budget and
/// named in its warnings; a budget with no rejected row has no such warning.
#[tokio::test]
async fn a_rejected_extract_row_is_warned_in_its_persons_budget() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let mut reference = None;
        let app = tributary_tests::spawn_app_in_world(backend, |world| {
            let row = world
                .people
                .iter_mut()
                .find_map(|p| p.ilf.first_mut())
                .expect("someone has an ILF award");
            row.award_amount = "12x.00".into();
            reference = Some(row.ilf_reference.clone());
        })
        .await;
        let reference = reference.unwrap();
        let ids = app.register_world().await;
        let mut warned = Vec::new();
        for id in &ids {
            let budget = app.budget(id).await;
            let rejected: Vec<String> = budget["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["code"] == "UPSTREAM_DATA_REJECTED" && w["streamId"] == "ilf")
                .map(|w| w["message"].as_str().unwrap().to_owned())
                .collect();
            if !rejected.is_empty() {
                let awards = &stream(&budget, "ilf").unwrap()["awards"];
                assert!(
                    awards
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|a| a["upstreamId"] != reference.as_str()),
                    "{backend:?}: the rejected award is left out"
                );
                warned.push(rejected);
            }
        }
        assert_eq!(
            warned.len(),
            1,
            "{backend:?}: one person's budget warns: {warned:?}"
        );
        assert_eq!(warned[0].len(), 1, "{backend:?}");
        assert!(
            warned[0][0].contains("award_amount"),
            "{backend:?}: {}",
            warned[0][0]
        );
    }
}

/// A view reads an extract's rejected rows only when the extract rejected some: one query
/// fewer for a served budget otherwise.
#[tokio::test]
async fn rejected_extract_rows_are_read_only_when_the_extract_has_some() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = spawn_app(backend).await;
        let ids = app.register_world().await;
        let noop = |_: u64, _: u64| {};
        tributary::services::sync::run(&app.db, &app.registry, 8, &noop)
            .await
            .unwrap();
        app.warm_audit_writer(&ids[0]).await;
        let served = || async {
            let before = app.queries.load(std::sync::atomic::Ordering::SeqCst);
            app.budget(&ids[0]).await;
            app.queries.load(std::sync::atomic::Ordering::SeqCst) - before
        };
        let none_rejected = served().await;
        app.execute("UPDATE bulk_extracts SET rejected_count = 1 WHERE current = TRUE")
            .await;
        let some_rejected = served().await;
        // On PostgreSQL the view's reads are one statement (see `pg_bundle`), which reads the
        // rejected rows within it when there are some.
        let extra = u64::from(backend == Backend::Sqlite);
        assert_eq!(
            some_rejected,
            none_rejected + extra,
            "{backend:?}: with none rejected {none_rejected} queries, with some {some_rejected}"
        );
    }
}

/// On PostgreSQL a served budget reads the store in one statement, the person with
/// everything their view asks about, however many streams and plan items it has: no more
/// than the person alone. A page of budgets takes a fixed number too.
#[tokio::test]
async fn a_postgres_view_reads_the_store_with_its_person_in_one_statement() {
    let (app, ids) = synced_world_with_a_plan(Backend::Postgres).await;
    let token = app.person(&ids[0]);
    let count = || app.queries.load(std::sync::atomic::Ordering::SeqCst);
    app.warm_audit_writer(&ids[0]).await;
    // The person alone: their read and the audit log's record of it.
    let before = count();
    let response = app
        .gql_as(
            Some(&token),
            None,
            "query($id: ID!) { person(id: $id) { id } }",
            json!({ "id": ids[0] }),
        )
        .await;
    assert_eq!(response.data()["person"]["id"], ids[0].as_str());
    let person_alone = count() - before;
    let before = count();
    let budget = app.budget(&ids[0]).await;
    let with_budget = count() - before;
    let streams = budget["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 4, "{budget}");
    assert!(streams.iter().all(|s| s["status"] == "FRESH"), "{budget}");
    assert_ne!(budget["committed"]["amount"], "0.00", "{budget}");
    assert_eq!(
        with_budget, person_alone,
        "the person alone took {person_alone} statements, with their budget {with_budget}"
    );
    let few = queries_for_page(&app, 5).await;
    let many = queries_for_page(&app, 50).await;
    assert!(
        many <= few + 2,
        "5 people cost {few} queries, 50 cost {many}: the reads are not batched"
    );
}

/// `BUDGET` asked of the person holding `$value` under `scheme`.
fn budget_by_identifier(scheme: &str) -> String {
    tributary_tests::BUDGET
        .replace("query($id: ID!)", "query($value: String!)")
        .replace(
            "person(id: $id)",
            &format!("personByIdentifier(scheme: {scheme}, value: $value)"),
        )
}

/// Every person's budget (the fields `BUDGET` asks) from one page of people, by person id.
async fn paged_budgets(app: &TestApp) -> std::collections::HashMap<String, Value> {
    let query = tributary_tests::BUDGET.replace(
        "query($id: ID!) { person(id: $id) {",
        "query { people(first: 100) { edges { node { id",
    ) + " } }";
    let auditor = app.token("test-auditor", tributary::auth::Role::Auditor);
    let response = app
        .gql_as(Some(&auditor), Some("caseload audit"), &query, json!({}))
        .await;
    response.data()["people"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["node"]["id"].as_str().unwrap().to_owned(),
                e["node"]["superBudget"].clone(),
            )
        })
        .collect()
}

/// A PostgreSQL budget read with its person (`persons::get_served_with_views`, which derives
/// the subjects to read from the person's identifiers in SQL) is exactly the budget read the
/// other way: a page of people, whose views each ask the store about the pairs their
/// connectors derive (`Connector::subject`). The council looks people up by client id and then
/// NHS number, and the world's people hold both, so the statement must pick the client id as
/// the council's connector does; and a person with no identifier a connector knows has no
/// stream from it either way. A person found by identifier (`personByIdentifier`) is read with
/// their budget as a person found by id is, so it answers the same too.
#[tokio::test]
async fn a_postgres_budget_read_with_its_person_matches_a_page_read() {
    let (app, ids) = synced_world_with_a_plan(Backend::Postgres).await;
    let paged = paged_budgets(&app).await;
    assert_eq!(paged.len(), ids.len());
    for id in &ids {
        let with_person = app.budget(id).await;
        assert!(
            with_person["streams"]
                .as_array()
                .is_some_and(|s| !s.is_empty()),
            "{with_person}"
        );
        assert_eq!(paged[id], with_person, "person {id}");
    }
    let by_identifier = budget_by_identifier("NINO");
    let ninos: Vec<(String, String)> = {
        use sea_orm::ConnectionTrait;
        app.db
            .query_all_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT person_id, value FROM person_identifiers WHERE scheme = 'NINO' \
                 ORDER BY person_id",
            ))
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.try_get("", "person_id").unwrap(),
                    r.try_get("", "value").unwrap(),
                )
            })
            .collect()
    };
    assert!(
        ninos.len() >= 2,
        "the world's people have national insurance numbers"
    );
    for (id, nino) in &ninos {
        let token = app.person(id);
        let response = app
            .gql_as(Some(&token), None, &by_identifier, json!({ "value": nino }))
            .await;
        let found = response.data()["personByIdentifier"]["superBudget"].clone();
        assert_eq!(paged[id], found, "person {id} by identifier");
    }
    // Without the identifiers the council and health board know them by, neither stream.
    let id = &ninos[0].0;
    app.execute(&format!(
        "DELETE FROM person_identifiers WHERE person_id = '{id}' \
         AND scheme IN ('COUNCIL_CLIENT_ID', 'NHS_NUMBER')"
    ))
    .await;
    let with_person = app.budget(id).await;
    assert_eq!(paged_budgets(&app).await[id], with_person);
    for id in ["la-social-care", "phb"] {
        assert!(stream(&with_person, id).is_none(), "{id}: {with_person}");
    }
}

/// A budget asked for by identifier costs one read of the store more than by id on
/// PostgreSQL, the identifier's lookup: the person comes with everything their views ask in
/// one statement either way (see `persons::get_served_with_views`), not the person and then
/// their views.
#[tokio::test]
async fn a_postgres_budget_by_identifier_reads_its_person_with_its_views() {
    let (app, ids) = synced_world_with_a_plan(Backend::Postgres).await;
    let count = || app.queries.load(std::sync::atomic::Ordering::SeqCst);
    app.warm_audit_writer(&ids[0]).await;
    let nhs: String = {
        use sea_orm::ConnectionTrait;
        app.db
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT value FROM person_identifiers WHERE person_id = $1 \
                 AND scheme = 'NHS_NUMBER'",
                [ids[0].clone().into()],
            ))
            .await
            .unwrap()
            .expect("the world's first person has an NHS number")
            .try_get("", "value")
            .unwrap()
    };
    let by_identifier = budget_by_identifier("NHS_NUMBER");
    let token = app.person(&ids[0]);
    let before = count();
    let by_id = app.budget(&ids[0]).await;
    let by_id_statements = count() - before;
    let before = count();
    let response = app
        .gql_as(Some(&token), None, &by_identifier, json!({ "value": nhs }))
        .await;
    let by_identifier_statements = count() - before;
    assert_eq!(response.data()["personByIdentifier"]["superBudget"], by_id);
    assert_eq!(
        by_identifier_statements,
        by_id_statements + 1,
        "by id {by_id_statements} statements, by identifier {by_identifier_statements}"
    );
}

/// The inline SQLite reads of the served path (`sqlite_reads`) decode every column as sea-orm
/// does: instants to the nanosecond, dates, flags, optional values, and row order.
#[tokio::test]
async fn inline_sqlite_reads_return_exactly_what_sea_orm_reads() {
    use entities::{
        bulk_extract, bulk_record, funding_share, person, person_identifier, plan_item,
        rejected_record, upstream_snapshot,
    };
    use sea_orm::{EntityTrait, QueryOrder};

    let app = spawn_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    let token = app.person(&ids[0]);
    let split = json!([
        { "streamId": "la-social-care", "percent": "60" },
        { "streamId": "phb", "percent": "40" }
    ]);
    app.gql_as(Some(&token), None, ADD, wheelchair(&ids[0], split))
        .await
        .data();
    let mut weekly = wheelchair(&ids[0], json!([{ "streamId": "phb", "percent": "100" }]));
    weekly["input"]["frequency"] = json!("weekly");
    weekly["input"]["cost"] = json!("42.50");
    weekly["input"]["endDate"] = json!("2027-01-31");
    app.gql_as(Some(&token), None, ADD, weekly).await.data();
    let noop = |_: u64, _: u64| {};
    tributary::services::sync::run(&app.db, &app.registry, 8, &noop)
        .await
        .unwrap();

    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let local = tributary::sqlite_reads::SqliteReads::open(&app.database_url, counter.clone())
        .expect("a SQLite file store is read inline");

    let snapshots = upstream_snapshot::Entity::find()
        .order_by_asc(upstream_snapshot::Column::Id)
        .all(&app.db)
        .await
        .unwrap();
    assert!(snapshots.len() > 100, "{} snapshots", snapshots.len());
    let mut connectors: Vec<&str> = snapshots.iter().map(|s| s.connector.as_str()).collect();
    connectors.sort_unstable();
    connectors.dedup();
    let mut subjects: Vec<&str> = snapshots.iter().map(|s| s.subject_key.as_str()).collect();
    subjects.sort_unstable();
    subjects.dedup();
    // Every connector with every subject key: each stored pair is found once, and the pairs
    // no connector holds (another connector's subject keys) find nothing.
    let pairs: Vec<(&str, &str)> = connectors
        .iter()
        .flat_map(|&c| subjects.iter().map(move |&s| (c, s)))
        .collect();
    assert!(pairs.len() > snapshots.len());
    let mut inline = local.snapshots(&pairs).unwrap();
    inline.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(inline, snapshots);
    let one = &snapshots[snapshots.len() / 2];
    assert_eq!(
        local
            .snapshots(&[(one.connector.as_str(), one.subject_key.as_str())])
            .unwrap(),
        vec![one.clone()]
    );

    let extracts: Vec<bulk_extract::Model> = bulk_extract::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.current)
        .collect();
    assert_eq!(extracts.len(), 1);
    assert_eq!(local.current_extracts(&["ilf", "phb"]).unwrap(), extracts);

    let rows: Vec<bulk_record::Model> = bulk_record::Entity::find()
        .order_by_asc(bulk_record::Column::Id)
        .all(&app.db)
        .await
        .unwrap();
    let keys: Vec<&str> = rows.iter().map(|r| r.subject_key.as_str()).collect();
    assert_eq!(local.bulk_rows(&extracts[0].id, &keys).unwrap(), rows);

    // A person by an identifier (`personByIdentifier`): every stored identifier finds its
    // holder, and a value nobody holds under a scheme finds nobody.
    let identifiers = person_identifier::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    assert!(
        identifiers.len() > ids.len(),
        "{} identifiers",
        identifiers.len()
    );
    for i in &identifiers {
        assert_eq!(
            local.person_id_by_identifier(&i.scheme, &i.value).unwrap(),
            Some(i.person_id.clone()),
            "{} {}",
            i.scheme,
            i.value
        );
    }
    let held = &identifiers[0];
    let other_scheme = identifiers
        .iter()
        .map(|i| i.scheme.as_str())
        .find(|scheme| *scheme != held.scheme)
        .expect("the world's people hold identifiers of more than one scheme");
    assert!(
        !identifiers
            .iter()
            .any(|i| i.scheme == other_scheme && i.value == held.value),
        "nobody holds {} under {other_scheme}",
        held.value
    );
    assert_eq!(
        local
            .person_id_by_identifier(other_scheme, &held.value)
            .unwrap(),
        None
    );
    assert_eq!(
        local
            .person_id_by_identifier(&held.scheme, "NOBODY")
            .unwrap(),
        None
    );

    // Two rejected records kept for one subject: one with a line number, one without.
    let subject = rows[0].subject_key.clone();
    let rejected_now = [
        connectors::Rejected {
            upstream_id: Some("ILF-BAD-1".into()),
            subject_key: Some(subject.clone()),
            line: Some(7),
            reason: "amount is not a number".into(),
            raw: "ILF-BAD-1,x".into(),
        },
        connectors::Rejected {
            upstream_id: None,
            subject_key: None,
            line: None,
            reason: "no award id".into(),
            raw: "{}".into(),
        },
    ];
    tributary::services::sources::replace_rejected(
        &app.db,
        "ilf",
        Some(&subject),
        &rejected_now,
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let rejected: Vec<rejected_record::Model> = rejected_record::Entity::find()
        .order_by_asc(rejected_record::Column::Id)
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.connector == "ilf" && r.subject_key.is_some())
        .collect();
    assert!(rejected.len() >= 2, "{} rejected ILF rows", rejected.len());
    let keys: Vec<&str> = rejected
        .iter()
        .filter_map(|r| r.subject_key.as_deref())
        .collect();
    assert_eq!(local.rejected("ilf", &keys).unwrap(), rejected);

    let items = plan_item::Entity::find()
        .order_by_asc(plan_item::Column::Id)
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().any(|i| i.end_date.is_some()));
    let shares = funding_share::Entity::find()
        .order_by_asc(funding_share::Column::Position)
        .all(&app.db)
        .await
        .unwrap();
    let (inline_items, mut inline_shares) = local.plan_items(&[ids[0].as_str()]).unwrap();
    assert_eq!(inline_items, items);
    let order = |s: &funding_share::Model| (s.position, s.id.clone());
    inline_shares.sort_by_key(order);
    let mut shares = shares;
    shares.sort_by_key(order);
    assert_eq!(inline_shares, shares);

    for id in ids.iter().take(20) {
        let row = person::Entity::find_by_id(id.clone())
            .one(&app.db)
            .await
            .unwrap()
            .unwrap();
        let mut identifiers: Vec<person_identifier::Model> = person_identifier::Entity::find()
            .all(&app.db)
            .await
            .unwrap()
            .into_iter()
            .filter(|i| &i.person_id == id)
            .collect();
        let (inline_row, mut inline_identifiers) = local.person(id).unwrap().unwrap();
        assert_eq!(inline_row, row);
        identifiers.sort_by(|a, b| a.id.cmp(&b.id));
        inline_identifiers.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(inline_identifiers, identifiers);
    }
    assert!(
        local
            .person("00000000-0000-7000-8000-000000000000")
            .unwrap()
            .is_none()
    );
    // A person with no identifier at all is still a person.
    let mut lone = person::Entity::find_by_id(ids[0].clone())
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    lone.id = "00000000-0000-7000-8000-00000000000a".into();
    person::Entity::insert(sea_orm::IntoActiveModel::into_active_model(lone.clone()))
        .exec(&app.db)
        .await
        .unwrap();
    assert_eq!(local.person(&lone.id).unwrap(), Some((lone, Vec::new())));
    // Every inline statement is counted with the rest (the batching test relies on it).
    assert!(counter.load(std::sync::atomic::Ordering::SeqCst) >= 27);
}

/// PostgreSQL's served reads (`pg_reads`) run sea-orm's own statements on connections of
/// their own: they return exactly what the pool returns, count with the rest, and cannot
/// write, whether asked through sea-orm or with a statement of their own.
#[tokio::test]
async fn postgres_readers_read_what_the_pool_reads_and_cannot_write() {
    use entities::{person, person_identifier, plan_item, upstream_snapshot};
    use sea_orm::{ConnectionTrait, EntityTrait, QueryOrder, Statement};

    let app = spawn_app(Backend::Postgres).await;
    let ids = app.register_world().await;
    let token = app.person(&ids[0]);
    let split = json!([
        { "streamId": "la-social-care", "percent": "60" },
        { "streamId": "phb", "percent": "40" }
    ]);
    app.gql_as(Some(&token), None, ADD, wheelchair(&ids[0], split))
        .await
        .data();
    app.budget(&ids[0]).await;

    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reads = tributary::pg_reads::PgReads::open(&app.database_url, 4, counter.clone())
        .expect("a PostgreSQL store has readers of its own");
    assert!(tributary::pg_reads::PgReads::open("sqlite://x.db", 4, counter.clone()).is_none());

    let people = person::Entity::find()
        .order_by_asc(person::Column::Id)
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(people.len(), ids.len());
    let read = person::Entity::find()
        .order_by_asc(person::Column::Id)
        .all(&reads)
        .await
        .unwrap();
    assert_eq!(read, people);
    let identifiers = person_identifier::Entity::find()
        .order_by_asc(person_identifier::Column::Id)
        .all(&reads)
        .await
        .unwrap();
    assert_eq!(
        identifiers,
        person_identifier::Entity::find()
            .order_by_asc(person_identifier::Column::Id)
            .all(&app.db)
            .await
            .unwrap()
    );
    let snapshots = upstream_snapshot::Entity::find()
        .order_by_asc(upstream_snapshot::Column::Id)
        .all(&reads)
        .await
        .unwrap();
    assert!(!snapshots.is_empty());
    assert_eq!(
        snapshots,
        upstream_snapshot::Entity::find()
            .order_by_asc(upstream_snapshot::Column::Id)
            .all(&app.db)
            .await
            .unwrap()
    );
    let items = plan_item::Entity::find().all(&reads).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items, plan_item::Entity::find().all(&app.db).await.unwrap());
    let one = person::Entity::find_by_id(ids[1].clone())
        .one(&reads)
        .await
        .unwrap();
    assert_eq!(one.as_ref().map(|p| &p.id), Some(&ids[1]));
    assert_eq!(counter.load(std::sync::atomic::Ordering::SeqCst), 5);

    // No JIT compilation: the planner's guesses for JSON parameters made a read of a few
    // people look costly enough to compile, 45 ms for a read of under one.
    let jit = reads
        .query_one_raw(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT current_setting('jit') AS jit",
        ))
        .await
        .unwrap()
        .expect("one row");
    assert_eq!(jit.try_get::<String>("", "jit").unwrap(), "off");

    // No writing: sea-orm's writes are refused here, and a writing statement sent as a query
    // is refused by the server (the sessions are read-only).
    assert!(
        reads
            .execute_unprepared("DELETE FROM persons")
            .await
            .is_err()
    );
    let delete = Statement::from_string(
        sea_orm::DbBackend::Postgres,
        "DELETE FROM persons RETURNING id",
    );
    let refused = reads.query_all_raw(delete).await.unwrap_err();
    assert!(refused.to_string().contains("read-only"), "{refused}");
    assert_eq!(app.count("persons").await, ids.len() as i64);
}

/// After an extract is loaded and after a sync, the planner's statistics of the tables they
/// filled are fresh (the served path's readers keep their plans until statistics change).
#[tokio::test]
async fn bulk_writes_leave_postgres_statistics_fresh() {
    let app = spawn_app(Backend::Postgres).await;
    app.register_world().await;
    let analyzed = |table: &str| {
        app.scalar::<bool>(format!(
            "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = '{table}'"
        ))
    };
    // The ILF extract was loaded as the server started.
    assert!(analyzed("bulk_records").await);
    assert!(!analyzed("upstream_snapshots").await);
    let noop = |_: u64, _: u64| {};
    tributary::services::sync::run(&app.db, &app.registry, 8, &noop)
        .await
        .unwrap();
    assert!(analyzed("upstream_snapshots").await);

    // A sync also refreshes them as it goes, not only at the end: here once 16 snapshots are
    // stored (of about 180; how many more depends on how the fetches batch up).
    let count = || {
        app.scalar::<i64>(
            "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'upstream_snapshots'",
        )
    };
    let before = count().await;
    tributary::services::sync::run_analyzing_from(&app.db, &app.registry, 8, &noop, 16)
        .await
        .unwrap();
    let refreshed = count().await - before;
    assert!(
        refreshed >= 2,
        "{refreshed} refreshes: at least one while storing and one at the end"
    );
}

/// A reader whose session the server ended (a restart, an idle timeout, an administrator) is
/// replaced: the read is asked again on a new connection, and the request does not fail.
#[tokio::test]
async fn a_postgres_reader_whose_session_ended_reads_on_a_new_one() {
    let app = spawn_app(Backend::Postgres).await;
    let ids = app.register_world().await;
    let before = app.budget(&ids[0]).await;
    let ended = || {
        app.scalar::<i64>(format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = '{}' AND datname = current_database()",
            tributary::pg_reads::READER_NAME
        ))
    };
    assert!(ended().await >= 1, "the server's readers had sessions");
    let after = app.budget(&ids[0]).await;
    assert_eq!(after["net"], before["net"]);
    assert_eq!(after["streams"], before["streams"]);
}

/// The sessions that keep a view's answers on PostgreSQL (`pg_snapshots`) are replaced like the
/// readers' when the server ends them: the next uncached view still keeps its answers.
#[tokio::test]
async fn a_postgres_snapshot_writer_whose_session_ended_keeps_on_a_new_one() {
    let app = spawn_uncached_app(Backend::Postgres).await;
    let ids = app.register_world().await;
    let last_kept = || {
        app.scalar::<String>(
            "SELECT max(fetched_at)::text FROM upstream_snapshots WHERE connector = 'phb'",
        )
    };
    app.budget(&ids[0]).await;
    let first = last_kept().await;
    let ended = app
        .scalar::<i64>(format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = '{}' AND datname = current_database()",
            tributary::pg_reads::SNAPSHOT_WRITER_NAME
        ))
        .await;
    assert!(
        ended >= 1,
        "the first view kept its answers on the writer's sessions"
    );
    let second = app.budget(&ids[0]).await;
    assert_eq!(second["streams"].as_array().map(Vec::len), Some(4));
    assert_ne!(
        last_kept().await,
        first,
        "the second view's answers were kept, on a new session"
    );
}

/// The sessions that keep a view's answers on PostgreSQL commit without waiting for the log's
/// flush (a lost snapshot is asked of its partner again): they set it themselves. The readers
/// and the pool keep the server's setting, as the audit appender does (its options set
/// nothing: `audit::tests::the_appender_keeps_postgresql_default_planning`).
#[tokio::test]
async fn postgres_snapshot_writers_alone_commit_without_waiting_for_the_flush() {
    use sea_orm::{ConnectionTrait, Statement};

    let app = spawn_app(Backend::Postgres).await;
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reads = tributary::pg_reads::PgReads::open(&app.database_url, 4, counter)
        .expect("a PostgreSQL store has readers of its own");
    // The session's value and where it came from ("client": the session's own options).
    async fn setting(db: &impl ConnectionTrait) -> (String, String) {
        let row = db
            .query_one_raw(Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT setting, source FROM pg_settings WHERE name = 'synchronous_commit'",
            ))
            .await
            .unwrap()
            .expect("one row");
        (
            row.try_get::<String>("", "setting").unwrap(),
            row.try_get::<String>("", "source").unwrap(),
        )
    }
    let writer = reads
        .snapshot_writer()
        .expect("the readers have a snapshot writer");
    assert!(writer.snapshot_writer().is_none());
    assert_eq!(setting(writer).await, ("off".into(), "client".into()));
    let server = setting(&app.db).await;
    assert_ne!(server.1, "client", "the pool sets nothing: {server:?}");
    assert_eq!(setting(&reads).await, server);
}

/// A first view asks the three live partners at once and keeps their answers in one
/// transaction: one read of the stored versions and one write for all the snapshots (on
/// PostgreSQL one statement for both), not a read and a write (and a commit, and a turn at the
/// write lock) for each partner.
#[tokio::test]
async fn a_first_view_keeps_its_partners_answers_in_one_transaction() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = spawn_app(backend).await;
        let ids = app.register_world().await;
        let cost = |app: &TestApp| {
            i64::try_from(app.queries.load(std::sync::atomic::Ordering::SeqCst)).unwrap()
        };
        app.warm_audit_writer(&ids[0]).await;
        let before = cost(&app);
        let first = app.budget(&ids[0]).await;
        let after_first = cost(&app);
        let second = app.budget(&ids[0]).await;
        let after_second = cost(&app);
        assert_eq!(
            first, second,
            "{backend:?}: the kept answers are served next time"
        );
        assert_eq!(
            app.count("upstream_snapshots").await,
            3,
            "{backend:?}: three live partners, three snapshots"
        );
        // Served from the snapshots the second time; the difference is the keeping.
        let keeping = (after_first - before) - (after_second - after_first);
        // On PostgreSQL the read and the write are one statement (`pg_snapshots`).
        let expected = if backend == Backend::Postgres { 1 } else { 2 };
        assert!(
            keeping <= expected,
            "{backend:?}: keeping three answers cost {keeping} queries ({expected} expected)"
        );
    }
}

/// Snapshots stored together follow the same rules as one at a time: a key twice in one
/// batch is written once, as the later answer unless that is older than the earlier; rejected
/// records are replaced with the snapshot they came with; an answer older than the stored one
/// is kept out. The same through sea-orm on both stores and inline on a SQLite file.
#[tokio::test]
async fn snapshots_stored_in_one_batch_keep_the_versioning_rules() {
    use connectors::{PersonRecords, Rejected};
    use tributary::services::sources::Stored;

    let records = |key: &str, version: &str, rejected: &[&str]| PersonRecords {
        subject_key: key.to_owned(),
        version: Some(version.to_owned()),
        awards: Vec::new(),
        payments: Vec::new(),
        rejected: rejected
            .iter()
            .map(|reason| Rejected {
                upstream_id: None,
                subject_key: Some(key.to_owned()),
                line: None,
                reason: (*reason).to_owned(),
                raw: "{}".to_owned(),
            })
            .collect(),
        ambiguities: Vec::new(),
    };
    for (backend, how) in [
        (Backend::Sqlite, Keeping::Pool),
        (Backend::Sqlite, Keeping::Inline),
        (Backend::Postgres, Keeping::Pool),
        (Backend::Postgres, Keeping::View),
    ] {
        let app = spawn_app(backend).await;
        let inline = how == Keeping::Inline;
        let local = inline.then(|| {
            tributary::sqlite_reads::SqliteReads::open(&app.database_url, Default::default())
                .expect("the test store is a SQLite file")
        });
        let stored = |key: &'static str| {
            let db = app.db.clone();
            async move {
                use entities::upstream_snapshot;
                use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
                upstream_snapshot::Entity::find()
                    .filter(upstream_snapshot::Column::SubjectKey.eq(key))
                    .all(&db)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|s| s.version.unwrap_or_default())
                    .collect::<Vec<_>>()
            }
        };
        // Later and newer: the later stands. Later but older: the earlier stands.
        let (a1, a2) = (
            records("NHS:1", "1", &["a1"]),
            records("NHS:1", "2", &["a2"]),
        );
        let (b3, b2) = (records("NHS:2", "3", &[]), records("NHS:2", "2", &["b2"]));
        let out = store_either(
            how,
            local.as_ref(),
            &app.db,
            &[("phb", &a1), ("phb", &b3), ("phb", &a2), ("phb", &b2)],
        )
        .await
        .unwrap();
        assert_eq!(out.len(), 4, "{backend:?} {inline}");
        assert_eq!(out[3].1, Stored::Unchanged, "{backend:?} {inline}");
        assert_eq!(out[3].0.version.as_deref(), Some("3"), "{backend:?}");
        assert_eq!(stored("NHS:1").await, ["2"], "{backend:?}");
        assert_eq!(stored("NHS:2").await, ["3"], "{backend:?}");
        let reasons = || {
            let db = app.db.clone();
            async move {
                use entities::rejected_record;
                use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
                let mut r: Vec<String> = rejected_record::Entity::find()
                    .filter(rejected_record::Column::Connector.eq("phb"))
                    .all(&db)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| r.reason)
                    .collect();
                r.sort();
                r
            }
        };
        assert_eq!(reasons().await, ["a2"], "{backend:?}");

        // Next batch: an older answer is kept out; a changed one replaces its rejected rows.
        let (a0, b4) = (
            records("NHS:1", "0", &["a0"]),
            records("NHS:2", "4", &["b4"]),
        );
        let out = store_either(how, local.as_ref(), &app.db, &[("phb", &a0), ("phb", &b4)])
            .await
            .unwrap();
        assert_eq!(out[0].1, Stored::Unchanged, "{backend:?}");
        assert_eq!(out[0].0.version.as_deref(), Some("2"), "{backend:?}");
        assert_eq!(out[1].1, Stored::Changed, "{backend:?}");
        assert_eq!(stored("NHS:1").await, ["2"], "{backend:?}");
        assert_eq!(stored("NHS:2").await, ["4"], "{backend:?}");
        assert_eq!(reasons().await, ["a2", "b4"], "{backend:?}");
    }
}

/// On PostgreSQL a view's snapshots, stored in one statement (`pg_snapshots`), are exactly
/// what the pool's transaction stores: every column of the snapshot and its rejected rows, and
/// what each answered is what was stored (PostgreSQL keeps instants to the microsecond).
#[tokio::test]
async fn a_views_one_statement_stores_exactly_what_the_transaction_stores() {
    use tributary::services::sources::{Stored, usable_snapshot};

    let app = spawn_app(Backend::Postgres).await;
    let (viewed, pooled) = (full_records("NHS:1", "3"), full_records("NHS:2", "3"));
    let by_view = store_either(Keeping::View, None, &app.db, &[("phb", &viewed)])
        .await
        .unwrap();
    let by_pool = store_either(Keeping::Pool, None, &app.db, &[("phb", &pooled)])
        .await
        .unwrap();
    let micros = |t: chrono::DateTime<chrono::Utc>| t.timestamp_micros();
    let mut kept = Vec::new();
    for ((meta, stored), records) in [(&by_view[0], &viewed), (&by_pool[0], &pooled)] {
        assert_eq!(*stored, Stored::Changed);
        let row = stored_snapshot_of(&app.db, records).await;
        assert_eq!(row.content_hash, meta.content_hash);
        assert_eq!(micros(row.fetched_at), micros(meta.fetched_at));
        let (decoded, _) = usable_snapshot(row).expect("the stored snapshot decodes");
        assert_eq!(&decoded, records);
        let rejected = rejected_of(&app.db, &records.subject_key).await;
        assert_eq!(rejected.len(), 1);
        let r = &rejected[0];
        assert_eq!(micros(r.fetched_at), micros(meta.fetched_at));
        kept.push((
            r.connector.clone(),
            r.upstream_id.clone(),
            r.line_number,
            r.reason.clone(),
            r.raw.clone(),
        ));
    }
    assert_eq!(kept[0], kept[1]);
    assert_eq!(kept[0].1.as_deref(), Some("PHB-2"));

    // The same answer again: unchanged, its rejected rows kept as they were; a new version
    // replaces them.
    let again = store_either(Keeping::View, None, &app.db, &[("phb", &viewed)])
        .await
        .unwrap();
    assert_eq!(again[0].1, Stored::Unchanged);
    let newer = full_records("NHS:1", "4");
    let changed = store_either(Keeping::View, None, &app.db, &[("phb", &newer)])
        .await
        .unwrap();
    assert_eq!(changed[0].1, Stored::Changed);
    assert_eq!(changed[0].0.version.as_deref(), Some("4"));
    let rejected = rejected_of(&app.db, "NHS:1").await;
    assert_eq!(rejected.len(), 1, "replaced, not added to");
    assert_eq!(
        micros(rejected[0].fetched_at),
        micros(changed[0].0.fetched_at)
    );
}

/// The one statement's version comparison (`pg_snapshots`) decides exactly as
/// `sources::is_older` does, at the edges of what a 64-bit integer holds too.
#[tokio::test]
async fn postgresql_compares_versions_as_the_hub_does() {
    use sea_orm::{ConnectionTrait, Statement};
    let app = spawn_app(Backend::Postgres).await;
    let versions = [
        None,
        Some(""),
        Some("7"),
        Some("12"),
        Some("+12"),
        Some("-3"),
        Some("007"),
        Some("abc"),
        Some("1.5"),
        Some(" 7"),
        Some("-"),
        Some("9223372036854775807"),
        Some("9223372036854775808"),
        Some("-9223372036854775808"),
        Some("-9223372036854775809"),
        Some("99999999999999999999999"),
    ];
    let sql = tributary::pg_snapshots::older("$1::text", "$2::text");
    for answer in versions {
        for stored in versions {
            let row = app
                .db
                .query_one_raw(Statement::from_sql_and_values(
                    sea_orm::DbBackend::Postgres,
                    format!("SELECT {sql} AS older"),
                    [answer.into(), stored.into()],
                ))
                .await
                .unwrap()
                .unwrap();
            let older: bool = row.try_get("", "older").unwrap();
            assert_eq!(
                older,
                tributary::services::sources::is_older(answer, stored),
                "{answer:?} against {stored:?}"
            );
        }
    }
}

/// The phb snapshot stored for `records`' subject, checked against them: their version (3),
/// the records as JSON and that JSON's hash.
async fn stored_snapshot_of(
    db: &sea_orm::DatabaseConnection,
    records: &connectors::PersonRecords,
) -> entities::upstream_snapshot::Model {
    use entities::upstream_snapshot;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let row = upstream_snapshot::Entity::find()
        .filter(upstream_snapshot::Column::SubjectKey.eq(records.subject_key.clone()))
        .one(db)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("the snapshot is stored"));
    assert_eq!(row.connector, "phb");
    assert_eq!(row.version.as_deref(), Some("3"));
    assert_eq!(row.records, serde_json::to_string(records).unwrap());
    assert_eq!(
        row.content_hash,
        tributary::services::sources::content_hash(&row.records)
    );
    row
}

/// The rejected records kept for `subject_key`.
async fn rejected_of(
    db: &sea_orm::DatabaseConnection,
    subject_key: &str,
) -> Vec<entities::rejected_record::Model> {
    use entities::rejected_record;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    rejected_record::Entity::find()
        .filter(rejected_record::Column::SubjectKey.eq(subject_key))
        .all(db)
        .await
        .unwrap()
}

/// Records with every kind of field the snapshot store keeps: an award with lines, a rejected
/// record naming no subject (it takes the snapshot's), and text that needs escaping.
fn full_records(key: &str, version: &str) -> connectors::PersonRecords {
    use connectors::{Award, AwardLine, Counting, Frequency, PersonRecords, Rejected};
    use rust_decimal::Decimal;
    PersonRecords {
        subject_key: key.to_owned(),
        version: Some(version.to_owned()),
        awards: vec![Award {
            upstream_id: "PHB-1".into(),
            version: Some(version.to_owned()),
            purpose: "personal care, \"night\" support".into(),
            delivery: Some("direct_payment".into()),
            frequency: Frequency::FourWeekly,
            amount: Decimal::new(123_457, 2),
            contribution: None,
            start_date: chrono::NaiveDate::from_ymd_opt(2026, 4, 1),
            end_date: None,
            review_date: chrono::NaiveDate::from_ymd_opt(2027, 1, 15),
            payment_date: None,
            status: "agreed".into(),
            counting: Counting::Active,
            lines: vec![AwardLine {
                upstream_id: "L1".into(),
                purpose: "personal_care".into(),
                delivery: None,
                description: Some("it's ünïcode; DROP TABLE x".into()),
                amount: Decimal::new(123_457, 2),
            }],
        }],
        payments: Vec::new(),
        rejected: vec![Rejected {
            upstream_id: Some("PHB-2".into()),
            subject_key: None,
            line: Some(7),
            reason: "amount is not money".into(),
            raw: r#"{"amount":"12.3.4"}"#.into(),
        }],
        ambiguities: vec!["two records".into()],
    }
}

/// The inline snapshot writer stores exactly what sea-orm stores: sea-orm reads back every
/// column of its snapshot and rejected rows, the instants to the nanosecond and as the same
/// text sqlx writes, and what the writer answered is what was stored.
#[tokio::test]
async fn sea_orm_reads_back_exactly_what_the_inline_snapshot_writer_wrote() {
    use sea_orm::{ConnectionTrait, Statement};
    use tributary::services::sources::{Stored, usable_snapshot};

    let app = spawn_app(Backend::Sqlite).await;
    let local = tributary::sqlite_reads::SqliteReads::open(&app.database_url, Default::default())
        .expect("the test store is a SQLite file");
    let (inline, pooled) = (full_records("NHS:1", "3"), full_records("NHS:2", "3"));
    let by_inline = store_either(Keeping::Inline, Some(&local), &app.db, &[("phb", &inline)])
        .await
        .unwrap();
    let by_pool = store_either(Keeping::Pool, None, &app.db, &[("phb", &pooled)])
        .await
        .unwrap();
    for ((meta, stored), records) in [(&by_inline[0], &inline), (&by_pool[0], &pooled)] {
        assert_eq!(*stored, Stored::Changed);
        let row = stored_snapshot_of(&app.db, records).await;
        assert_eq!(row.fetched_at, meta.fetched_at, "to the nanosecond");
        let (decoded, stored_meta) = usable_snapshot(row).expect("the stored snapshot decodes");
        assert_eq!(&decoded, records);
        assert_eq!(&stored_meta, meta);

        let rejected = rejected_of(&app.db, &records.subject_key).await;
        assert_eq!(rejected.len(), 1);
        let r = &rejected[0];
        assert_eq!(r.connector, "phb");
        assert_eq!(r.upstream_id.as_deref(), Some("PHB-2"));
        assert_eq!(r.line_number, Some(7));
        assert_eq!(r.reason, "amount is not money");
        assert_eq!(r.raw, r#"{"amount":"12.3.4"}"#);
        assert_eq!(r.fetched_at, meta.fetched_at);
    }
    // Stored as the same text, so instants compare and sort alike whoever wrote them.
    let texts = app
        .db
        .query_all_raw(Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "SELECT s.subject_key, s.fetched_at, r.fetched_at FROM upstream_snapshots s \
             JOIN rejected_records r ON r.subject_key = s.subject_key ORDER BY s.subject_key",
        ))
        .await
        .unwrap();
    assert_eq!(texts.len(), 2);
    for (row, meta) in texts.iter().zip([&by_inline[0].0, &by_pool[0].0]) {
        let expected = meta
            .fetched_at
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
        assert_eq!(row.try_get_by_index::<String>(1).unwrap(), expected);
        assert_eq!(row.try_get_by_index::<String>(2).unwrap(), expected);
    }
}

/// The inline readers keep one view of the store across reads while nothing they read has
/// changed in this process: a write from outside (another process) is seen once the view has
/// aged, and any write of this process at once. The server's pool reports its writes.
#[tokio::test]
async fn inline_readers_keep_a_view_until_this_process_writes_or_it_ages() {
    use sea_orm::ConnectionTrait;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tributary::sqlite_reads::{SqliteReads, data_generation};

    let app = spawn_app(Backend::Sqlite).await;
    let ids = app.register_world().await;
    let id = ids[0].as_str();
    // Other tests write in this process too: this one counts its own changes.
    let changes = Arc::new(AtomicU64::new(0));
    let open = |age| {
        SqliteReads::open(&app.database_url, Default::default())
            .expect("the test store is a SQLite file")
            .with_views(age, changes.clone())
    };
    let (kept, fresh) = (
        open(std::time::Duration::from_secs(3600)),
        open(std::time::Duration::ZERO),
    );
    let name = |reads: &SqliteReads| reads.person(id).unwrap().expect("the person").0.given_name;
    let before = name(&kept);
    assert_eq!(name(&fresh), before);
    // Another process renames the person.
    let outside = rusqlite::Connection::open(kept.path()).unwrap();
    outside
        .execute(
            "UPDATE persons SET given_name = 'Outside' WHERE id = ?1",
            [id],
        )
        .unwrap();
    assert_eq!(name(&kept), before, "the view is kept while young");
    assert_eq!(name(&fresh), "Outside", "an aged view is ended");
    // Ending aged views leaves a young one alone.
    kept.end_old_views();
    assert_eq!(name(&kept), before);
    // A change of this process is seen at once, whatever the view's age.
    changes.fetch_add(1, Ordering::AcqRel);
    assert_eq!(name(&kept), "Outside");

    // The server's pool tells the process's readers of a write it runs.
    let generation = data_generation();
    app.db
        .execute_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Sqlite,
            "UPDATE persons SET given_name = ? WHERE id = ?",
            ["Pooled".into(), id.into()],
        ))
        .await
        .unwrap();
    assert!(data_generation() > generation);
}

/// While another process holds the store's write lock, the inline writer does not wait on
/// the request's thread: it rolls back and the snapshots are stored through the pool, which
/// waits its turn; nothing is lost.
#[tokio::test]
async fn the_inline_snapshot_writer_leaves_a_locked_store_to_the_pool() {
    use std::sync::atomic::Ordering;
    use tributary::services::sources::Stored;

    let app = spawn_app(Backend::Sqlite).await;
    let local = std::sync::Arc::new(
        tributary::sqlite_reads::SqliteReads::open(&app.database_url, Default::default())
            .expect("the test store is a SQLite file"),
    );
    let other = rusqlite::Connection::open(local.path()).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let fallbacks = tributary::services::sources::inline_fallbacks();
    let storing = tokio::spawn({
        let (local, db) = (local.clone(), app.db.clone());
        async move {
            let records = full_records("NHS:1", "1");
            store_either(Keeping::Inline, Some(&local), &db, &[("phb", &records)]).await
        }
    });
    // The inline writer gives up at once; the pool's transaction then waits for the lock.
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while tributary::services::sources::inline_fallbacks() == fallbacks {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the snapshots went to the pool");
    let pool_before = app.queries.load(Ordering::Relaxed);
    assert!(!storing.is_finished(), "the pool waits for the lock");
    other.execute_batch("COMMIT").unwrap();
    let out = storing.await.unwrap().unwrap();
    assert_eq!(out[0].1, Stored::Changed);
    assert!(
        app.queries.load(Ordering::Relaxed) > pool_before,
        "the pool wrote them"
    );
    let snapshots = local.snapshots(&[("phb", "NHS:1")]).unwrap();
    assert_eq!(snapshots.len(), 1);
    assert_eq!(snapshots[0].fetched_at, out[0].0.fetched_at);
}

/// Stores snapshots inline on `local`'s writer, or through sea-orm.
/// How a test keeps snapshots: through the pool's transaction, inline on a SQLite file, or
/// as a view keeps them (on PostgreSQL, one statement where it can).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keeping {
    Pool,
    Inline,
    View,
}

async fn store_either(
    how: Keeping,
    local: Option<&tributary::sqlite_reads::SqliteReads>,
    db: &sea_orm::DatabaseConnection,
    fetched: &[(&str, &connectors::PersonRecords)],
) -> tributary::error::ApiResult<tributary::services::sources::Kept> {
    use tributary::services::sources;
    match (how, local) {
        (Keeping::Inline, Some(l)) => {
            sources::store_snapshots_inline(db, l.writer(), fetched).await
        }
        (Keeping::View, _) => sources::store_view_snapshots(db, db, fetched).await,
        _ => sources::store_snapshots(db, fetched).await,
    }
}

/// The PostgreSQL bundle (`pg_bundle`) answers exactly what the single reads answer: every
/// column of every row, in the same order, absence as absence, and rejected rows only where
/// the current extract rejected some.
#[tokio::test]
async fn the_postgres_bundle_reads_exactly_what_sea_orm_reads() {
    use entities::{bulk_extract, bulk_record, rejected_record, upstream_snapshot};
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
    use tributary::services::{plan, sources::usable_snapshot};

    let (app, ids) = synced_world_with_a_plan(Backend::Postgres).await;
    let snapshots = upstream_snapshot::Entity::find()
        .all(&app.db)
        .await
        .unwrap();
    let extract = bulk_extract::Entity::find()
        .filter(bulk_extract::Column::Current.eq(true))
        .one(&app.db)
        .await
        .unwrap()
        .expect("the ILF extract is loaded");
    let records = bulk_record::Entity::find()
        .filter(bulk_record::Column::ExtractId.eq(extract.id.clone()))
        .order_by_asc(bulk_record::Column::Id)
        .all(&app.db)
        .await
        .unwrap();
    let subject = records[0].subject_key.clone();
    // One rejected row for a subject the extract also has good rows for.
    app.execute(&format!(
        "INSERT INTO rejected_records (id, connector, subject_key, upstream_id, line_number, \
         reason, raw, fetched_at) VALUES ('r1', '{}', '{subject}', NULL, 7, 'award_amount: not \
         money', 'raw,line', '2026-11-24 10:11:12.345678+00')",
        extract.connector
    ))
    .await;
    let mut pairs: Vec<(String, String)> = snapshots
        .iter()
        .map(|s| (s.connector.clone(), s.subject_key.clone()))
        .chain(
            records
                .iter()
                .map(|r| (r.connector.clone(), r.subject_key.clone())),
        )
        .collect();
    pairs.push(("phb".into(), "NHS_NUMBER:0000000000".into()));
    let mut people = ids.clone();
    people.push("00000000-0000-0000-0000-000000000000".into());

    let bundle = tributary::pg_bundle::read(&app.db, &pairs, &people)
        .await
        .unwrap();
    for row in &snapshots {
        assert_eq!(
            bundle.snapshot(&row.connector, &row.subject_key),
            Some(Some(
                usable_snapshot(row.clone()).expect("the stored snapshot decodes")
            ))
        );
    }
    assert_eq!(bundle.snapshot("phb", "NHS_NUMBER:0000000000"), Some(None));
    assert_eq!(bundle.snapshot("phb", "NHS_NUMBER:1"), None, "not asked");
    assert_eq!(
        bundle.current_extract(&extract.connector),
        Some(Some(extract.clone()))
    );
    for record in &records {
        let expected: Vec<_> = records
            .iter()
            .filter(|r| r.subject_key == record.subject_key)
            .cloned()
            .collect();
        assert_eq!(
            bundle.bulk_rows(&extract.id, &record.subject_key),
            Some(expected)
        );
    }
    // No rejections counted: the bundle did not read them, so they are left to a single read.
    assert_eq!(bundle.rejected(&extract.connector, &subject), None);
    let items = plan::for_people(&app.db, &people).await.unwrap();
    assert!(!items[&ids[0]].is_empty());
    for person in &people {
        assert_eq!(
            bundle.plan_items(person),
            Some(items.get(person).cloned().unwrap_or_default())
        );
    }

    app.execute("UPDATE bulk_extracts SET rejected_count = 1 WHERE current = TRUE")
        .await;
    let bundle = tributary::pg_bundle::read(&app.db, &pairs, &people)
        .await
        .unwrap();
    let rejected = rejected_record::Entity::find().all(&app.db).await.unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(
        bundle.rejected(&extract.connector, &subject),
        Some(rejected)
    );
    let other = records
        .iter()
        .find(|r| r.subject_key != subject)
        .expect("the extract has a second subject");
    assert_eq!(
        bundle.rejected(&extract.connector, &other.subject_key),
        Some(Vec::new())
    );
}

/// On PostgreSQL the person reads of concurrent requests are merged (`coalesce`): each request
/// still gets its own person, exactly as a single read returns it, and an unknown or malformed
/// id gets NOT_FOUND without failing the others merged with it.
#[tokio::test]
async fn merged_postgres_person_reads_answer_each_request_with_its_own_person() {
    use std::sync::Arc;
    use tributary::reader::Reader;
    use tributary::services::persons;

    let app = spawn_app(Backend::Postgres).await;
    let ids = app.register_world().await;
    assert!(ids.len() > 8, "the world has {} people", ids.len());
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reads = tributary::pg_reads::PgReads::open(&app.database_url, 4, counter.clone())
        .expect("a PostgreSQL store has readers of its own");
    let reader = Reader::Postgres(Arc::new(reads));

    // Every id at once, with an unknown and a malformed one among them.
    let unknown = "00000000-0000-0000-0000-000000000000".to_owned();
    let mut asked: Vec<String> = ids.clone();
    asked.insert(3, unknown.clone());
    asked.insert(5, "not an id".to_owned());
    let answers =
        futures::future::join_all(asked.iter().map(|id| persons::get_served(&reader, id))).await;
    for (id, answer) in asked.iter().zip(answers) {
        if *id == unknown || id == "not an id" {
            assert_eq!(answer.unwrap_err().code(), "NOT_FOUND", "{id}");
        } else {
            let alone = persons::get(&app.db, id).await.unwrap();
            assert!(!alone.identifiers.is_empty());
            assert_eq!(answer.unwrap(), alone, "person {id}");
        }
    }

    // The merged statement itself: every person asked for, with identifiers in the order a
    // single read gives them, and nobody who was not asked for.
    let some: Vec<String> = ids.iter().take(5).cloned().chain([unknown]).collect();
    let many = persons::load_many(&app.db, &some).await.unwrap();
    assert_eq!(many.len(), 5);
    for id in &ids[..5] {
        assert_eq!(many[id], persons::get(&app.db, id).await.unwrap());
    }
    assert!(persons::load_many(&app.db, &[]).await.unwrap().is_empty());
}

/// The served path's person read on PostgreSQL looks each person up by index whatever the
/// caseload's size: with the ids in a JSON parameter the planner guesses 100 of them, and a
/// plain `IN (...)` over them scanned the whole table below about 40,000 people (4 ms a
/// served query at 20,000). A person with no identifiers still reads back, with none.
#[tokio::test]
async fn postgres_person_reads_look_people_up_by_index() {
    use tributary::services::persons;

    let app = spawn_app(Backend::Postgres).await;
    app.execute(
        "INSERT INTO persons (id, given_name, family_name, date_of_birth, version, created_by, \
         created_at, updated_at) \
         SELECT md5(g::text)::uuid::text, 'Given', 'Family', DATE '1970-01-01' + g % 9000, 1, \
         'test', now(), now() FROM generate_series(1, 20000) g;
         INSERT INTO person_identifiers (id, person_id, scheme, value, linked_by, linked_at) \
         SELECT md5(s || g)::uuid::text, md5(g::text)::uuid::text, s, s || g, 'test', now() \
         FROM generate_series(2, 20000) g, unnest(ARRAY['COUNCIL_CLIENT_ID', 'ILF_REFERENCE']) s;
         ANALYZE persons, person_identifiers;",
    )
    .await;
    let with: String = app.scalar("SELECT md5('2')::uuid::text").await;
    let without: String = app.scalar("SELECT md5('1')::uuid::text").await;
    let ids = serde_json::to_string(&[&with, &without]).unwrap();

    let plan: serde_json::Value = app
        .scalar(format!(
            "EXPLAIN (FORMAT JSON) {}",
            persons::PEOPLE_BY_ID_SQL.replace("$1", &format!("'{ids}'"))
        ))
        .await;
    let plan = plan.to_string();
    assert!(plan.contains("persons_pkey"), "{plan}");
    assert!(plan.contains("ix_person_identifiers_person"), "{plan}");
    assert!(
        !plan.contains("Seq Scan"),
        "a table is scanned whole: {plan}"
    );

    // The person read with their views' rows finds them by index too.
    let plan: serde_json::Value = app
        .scalar(format!(
            "EXPLAIN (FORMAT JSON) {}",
            tributary::pg_bundle::people_views_sql_for(&app.registry)
                .replace("$1", &format!("'{ids}'"))
        ))
        .await;
    fn scans(node: &serde_json::Value, out: &mut Vec<(String, String)>) {
        if let (Some(kind), Some(table)) =
            (node["Node Type"].as_str(), node["Relation Name"].as_str())
        {
            out.push((kind.to_owned(), table.to_owned()));
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            scans(child, out);
        }
    }
    let mut seen = Vec::new();
    scans(&plan[0]["Plan"], &mut seen);
    for table in ["persons", "person_identifiers"] {
        assert!(
            seen.iter().any(|(_, t)| t == table),
            "{table} not read: {plan}"
        );
        assert!(
            !seen.contains(&("Seq Scan".to_owned(), table.to_owned())),
            "{table} is scanned whole: {plan}"
        );
    }

    // The lookups are written into that statement as quoted literals (a quote and a backslash
    // come through as themselves), and no lookups at all is a statement too (a hub whose
    // partners are all asked on every view): the person is read either way, and a lookup's
    // connector has its pair derived and asked about.
    let subject = "COUNCIL_CLIENT_ID:COUNCIL_CLIENT_ID2";
    let odd = "o'hara\\";
    for (lookups, asked) in [
        (&[][..], false),
        (&[(odd, "COUNCIL_CLIENT_ID", 0)][..], true),
    ] {
        let read = tributary::pg_bundle::read_people_views(
            &app.db,
            std::slice::from_ref(&with),
            &tributary::pg_bundle::people_views_sql(lookups),
        )
        .await
        .unwrap();
        assert_eq!(read.people[&with].identifiers.len(), 2);
        let bundle = read.bundle.expect("the views' rows are usable");
        assert_eq!(
            bundle.snapshot(odd, subject).is_some(),
            asked,
            "{lookups:?}"
        );
    }

    let many = persons::load_many(&app.db, &[with.clone(), without.clone()])
        .await
        .unwrap();
    assert_eq!(many.len(), 2);
    assert_eq!(many[&with].identifiers.len(), 2);
    assert!(many[&without].identifiers.is_empty());
    for id in [&with, &without] {
        assert_eq!(many[id], persons::get(&app.db, id).await.unwrap());
    }
}

/// Budgets asked for many people at once on PostgreSQL, whose reads are merged across
/// requests, are each exactly the budget that person's request gets alone.
#[tokio::test]
async fn concurrent_postgres_budgets_each_match_the_budget_read_alone() {
    let (app, ids) = synced_world_with_a_plan(Backend::Postgres).await;
    let mut alone = Vec::new();
    for id in &ids {
        alone.push(app.budget(id).await);
    }
    let together = futures::future::join_all(ids.iter().map(|id| app.budget(id))).await;
    for ((id, one), merged) in ids.iter().zip(&alone).zip(&together) {
        assert!(one["streams"].as_array().is_some_and(|s| !s.is_empty()));
        assert_eq!(merged, one, "person {id}");
    }
}
