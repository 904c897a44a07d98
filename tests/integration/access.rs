//! Access the person owns: tokens, roles, consent, the audit chain and the limits, over HTTP.

use futures::FutureExt as _;
use std::sync::atomic::Ordering;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tributary::audit::{self, ChainStatus};
use tributary::auth::Role;
use tributary_tests::{Backend, TestApp, spawn_app, spawn_app_with, stream};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");

fn claims(app_iss: &str, aud: &str, exp_offset: i64, nbf_offset: Option<i64>) -> Value {
    let now = chrono::Utc::now().timestamp();
    let mut c = json!({ "iss": app_iss, "aud": aud, "exp": now + exp_offset, "sub": "test-admin", "role": "admin" });
    if let Some(nbf) = nbf_offset {
        c["nbf"] = json!(now + nbf);
    }
    c
}

fn rsa_token(kid: &str, key_file: &str, claims: &Value) -> String {
    let pem = std::fs::read(format!("{FIXTURES}/{key_file}")).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

async fn spawn_rs256() -> TestApp {
    spawn_app_with(Backend::Sqlite, |s| {
        s.auth.algorithm = tributary::config::JwtAlgorithm::RS256;
        s.auth.jwks_file = Some(format!("{FIXTURES}/jwks-rsa.json").into());
    })
    .await
}

async fn status_of(app: &TestApp, token: &str) -> (u16, Option<String>) {
    let r = app
        .gql_as(Some(token), None, "{ fundingStreams { id } }", json!({}))
        .await;
    (r.status, r.code().map(str::to_owned))
}

#[tokio::test]
async fn rs256_tokens_verify_by_kid_and_rotated_keys_work() {
    let app = spawn_rs256().await;
    let good = claims("tributary", "tributary-api", 600, None);
    assert_eq!(
        status_of(&app, &rsa_token("k1", "rsa-k1.pem", &good))
            .await
            .0,
        200
    );
    assert_eq!(
        status_of(&app, &rsa_token("k2", "rsa-k2.pem", &good))
            .await
            .0,
        200,
        "the rotated-in key"
    );
    for (name, token) in [
        ("an unknown kid", rsa_token("k9", "rsa-k1.pem", &good)),
        (
            "signed by another key than its kid",
            rsa_token("k2", "rsa-k1.pem", &good),
        ),
    ] {
        assert_eq!(
            status_of(&app, &token).await,
            (401, Some("UNAUTHENTICATED".into())),
            "{name}"
        );
    }
    // HS256 signed with the server's own RSA public key as the secret: the algorithm is pinned.
    let public = std::fs::read(format!("{FIXTURES}/rsa-k1.pub.pem")).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let confused =
        jsonwebtoken::encode(&header, &good, &EncodingKey::from_secret(&public)).unwrap();
    assert_eq!(status_of(&app, &confused).await.0, 401);
}

#[tokio::test]
async fn es256_tokens_verify_from_a_jwks() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.auth.algorithm = tributary::config::JwtAlgorithm::ES256;
        s.auth.jwks_file = Some(format!("{FIXTURES}/jwks-ec.json").into());
    })
    .await;
    let pem = std::fs::read(format!("{FIXTURES}/ec-k3.pem")).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k3".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims("tributary", "tributary-api", 600, None),
        &EncodingKey::from_ec_pem(&pem).unwrap(),
    )
    .unwrap();
    assert_eq!(status_of(&app, &token).await.0, 200);
}

#[tokio::test]
async fn every_bad_token_is_unauthenticated_and_says_nothing_more() {
    let app = spawn_app(Backend::Sqlite).await;
    let none_alg = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims("tributary", "tributary-api", 600, None).to_string())
    );
    let sign = |c: &Value| app.issuer().sign_raw(c).unwrap();
    let mut wrong_role = claims("tributary", "tributary-api", 600, None);
    wrong_role["role"] = json!("superuser");
    let mut typ = Header::new(Algorithm::HS256);
    typ.typ = Some("refresh".into());
    let cases = [
        ("garbage", "not-a-token".to_owned()),
        ("alg none", none_alg),
        (
            "expired",
            sign(&claims("tributary", "tributary-api", -3600, None)),
        ),
        (
            "not yet valid",
            sign(&claims("tributary", "tributary-api", 3600, Some(1800))),
        ),
        (
            "wrong issuer",
            sign(&claims("someone-else", "tributary-api", 600, None)),
        ),
        (
            "wrong audience",
            sign(&claims("tributary", "another-api", 600, None)),
        ),
        ("unknown role", sign(&wrong_role)),
        (
            "wrong typ",
            app.issuer()
                .sign_raw_with(typ, &claims("tributary", "tributary-api", 600, None))
                .unwrap(),
        ),
    ];
    for (name, token) in cases {
        let r = app
            .gql_as(Some(&token), None, "{ fundingStreams { id } }", json!({}))
            .await;
        assert_eq!(
            (r.status, r.code()),
            (401, Some("UNAUTHENTICATED")),
            "{name}"
        );
        assert_eq!(
            r.message(),
            "authentication required: send a valid bearer token",
            "{name}"
        );
        assert!(r.body["data"].is_null());
    }
    let fine = sign(&claims("tributary", "tributary-api", 600, None));
    assert_eq!(status_of(&app, &fine).await.0, 200);
    let mut listed = claims("tributary", "tributary-api", 600, None);
    listed["aud"] = json!(["another-api", "tributary-api"]);
    assert_eq!(
        status_of(&app, &sign(&listed)).await.0,
        200,
        "aud may be a list holding ours"
    );
}

/// The people and tokens of the matrix.
struct Cast {
    ada: String,
    ben: String,
    tokens: Vec<(&'static str, String, Option<&'static str>)>,
}

async fn cast(app: &TestApp) -> Cast {
    let ids = app.register_world().await;
    let (ada, ben) = (ids[0].clone(), ids[1].clone());
    let issuer = app.issuer();
    let grant = app
        .gql_as(
            Some(&app.person(&ada)),
            None,
            "mutation($p: ID!) { grantConsent(input: { personId: $p, agency: \"council-asc\", streams: [\"la-social-care\"], purpose: \"care review\" }) { id } }",
            json!({ "p": ada }),
        )
        .await;
    grant.data();
    let tokens = vec![
        ("person", app.person(&ada), None),
        ("representative", app.representative(&[&ada]), None),
        (
            "portal",
            issuer
                .issue(&ada, Role::Portal, Vec::new(), None, 600)
                .unwrap(),
            None,
        ),
        ("agency", app.agency("council-asc"), Some("care review")),
        (
            "other agency",
            app.agency("health-board"),
            Some("care review"),
        ),
        (
            "auditor",
            app.token("aud-1", Role::Auditor),
            Some("annual audit"),
        ),
        ("admin", app.admin(), None),
    ];
    Cast { ada, ben, tokens }
}

/// Whether each operation on `person` is allowed, as `ok` or the error code.
async fn probe(app: &TestApp, token: &str, purpose: Option<&str>, person: &str) -> Vec<String> {
    let reads = [
        "query($p: ID!) { person(id: $p) { givenName } }",
        "query($p: ID!) { person(id: $p) { superBudget { streams { stream { id } } } } }",
        "query($p: ID!) { person(id: $p) { supportPlan { id } } }",
        "query($p: ID!) { person(id: $p) { traceCsv } }",
        "query($p: ID!) { person(id: $p) { consents { id } } }",
        "query($p: ID!) { person(id: $p) { accessLog { action } } }",
        "mutation($p: ID!) { addPlanItem(input: { personId: $p, description: \"x\", purpose: \"x\", cost: \"10.00\", frequency: \"one_off\", startDate: \"2026-05-01\", shares: [{ streamId: \"la-social-care\", percent: \"100\" }] }) { id } }",
        "mutation($p: ID!) { grantConsent(input: { personId: $p, agency: \"x\", streams: [\"phb\"], purpose: \"x\" }) { id } }",
        "mutation($p: ID!) { linkIdentifier(personId: $p, identifier: { scheme: COUNCIL_CLIENT_ID, value: \"CL-NEW-1\" }) { id } }",
    ];
    let mut out = Vec::new();
    for q in reads {
        let r = app
            .gql_as(Some(token), purpose, q, json!({ "p": person }))
            .await;
        out.push(match r.code() {
            None => "ok".to_owned(),
            Some(code) => code.to_owned(),
        });
        // Undo a successful link so each role starts from the same place.
        if q.contains("linkIdentifier") && r.code().is_none() {
            app.gql(
                "mutation($p: ID!) { unlinkIdentifier(personId: $p, identifier: { scheme: COUNCIL_CLIENT_ID, value: \"CL-NEW-1\" }) { id } }",
                json!({ "p": person }),
            )
            .await
            .data();
        }
    }
    out
}

#[tokio::test]
async fn the_authorisation_matrix_holds_for_every_role() {
    let app = spawn_app(Backend::Sqlite).await;
    let c = cast(&app).await;
    let ok = "ok";
    let f = "FORBIDDEN";
    //                  person budget plan trace consents accessLog addPlan grant link
    let expected_own: [(&str, [&str; 9]); 7] = [
        ("person", [ok, ok, ok, ok, ok, ok, ok, ok, f]),
        ("representative", [ok, ok, ok, ok, ok, ok, ok, ok, f]),
        ("portal", [ok, ok, ok, ok, ok, ok, ok, ok, f]),
        ("agency", [ok, ok, ok, ok, f, f, ok, f, f]),
        ("other agency", [f, f, f, f, f, f, f, f, f]),
        ("auditor", [ok, ok, ok, ok, ok, f, f, f, f]),
        ("admin", [ok, f, f, f, f, f, f, f, ok]),
    ];
    for (role, token, purpose) in &c.tokens {
        let own = probe(&app, token, *purpose, &c.ada).await;
        let want = expected_own.iter().find(|(r, _)| r == role).unwrap().1;
        assert_eq!(own, want, "{role} on their allowed person");
        let other = probe(&app, token, *purpose, &c.ben).await;
        let want_other: Vec<&str> = match *role {
            "auditor" => want.to_vec(),
            "admin" => want.to_vec(),
            _ => vec![f; 9],
        };
        assert_eq!(other, want_other, "{role} on someone else");
    }
}

#[tokio::test]
async fn an_agency_sees_only_the_consented_streams_until_revoked_or_expired() {
    let app = spawn_app(Backend::Sqlite).await;
    let c = cast(&app).await;
    let agency = app.agency("council-asc");
    let q = "query($p: ID!) { person(id: $p) { superBudget { streams { stream { id } } gross { amount } } } }";
    let r = app
        .gql_as(Some(&agency), Some("care review"), q, json!({ "p": c.ada }))
        .await;
    let streams: Vec<&str> = r.data()["person"]["superBudget"]["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stream"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(streams, ["la-social-care"]);
    assert_eq!(
        r.data()["person"]["superBudget"]["gross"]["amount"],
        "21508.93"
    );
    // A plan item on another stream is invisible to the agency, and it cannot add one there.
    let ada = app.person(&c.ada);
    app.gql_as(Some(&ada), None, "mutation($p: ID!) { addPlanItem(input: { personId: $p, description: \"physio\", purpose: \"health\", cost: \"50.00\", frequency: \"weekly\", startDate: \"2026-05-01\", shares: [{ streamId: \"phb\", percent: \"100\" }] }) { id } }", json!({ "p": c.ada })).await.data();
    let plan = app
        .gql_as(
            Some(&agency),
            Some("care review"),
            "query($p: ID!) { person(id: $p) { supportPlan { id } } }",
            json!({ "p": c.ada }),
        )
        .await;
    assert_eq!(plan.data()["person"]["supportPlan"], json!([]));
    let add = app.gql_as(Some(&agency), Some("care review"), "mutation($p: ID!) { addPlanItem(input: { personId: $p, description: \"x\", purpose: \"x\", cost: \"10.00\", frequency: \"one_off\", startDate: \"2026-05-01\", shares: [{ streamId: \"phb\", percent: \"100\" }] }) { id } }", json!({ "p": c.ada })).await;
    assert_eq!(add.code(), Some("FORBIDDEN"));

    // Expiry: the consent ended yesterday.
    let consents = app
        .gql_as(
            Some(&ada),
            None,
            "query($p: ID!) { person(id: $p) { consents { id } } }",
            json!({ "p": c.ada }),
        )
        .await;
    let consent_id = consents.data()["person"]["consents"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let yesterday = (chrono::Utc::now().date_naive() - chrono::Duration::days(1)).to_string();
    app.execute(&format!(
        "UPDATE consents SET until = '{yesterday}' WHERE id = '{consent_id}'"
    ))
    .await;
    let expired = app
        .gql_as(Some(&agency), Some("care review"), q, json!({ "p": c.ada }))
        .await;
    assert_eq!(expired.code(), Some("FORBIDDEN"));
    app.execute(&format!(
        "UPDATE consents SET until = NULL WHERE id = '{consent_id}'"
    ))
    .await;
    assert!(
        app.gql_as(Some(&agency), Some("care review"), q, json!({ "p": c.ada }))
            .await
            .code()
            .is_none()
    );

    // Revocation takes effect on the next request.
    let revoked = app
        .gql_as(
            Some(&ada),
            None,
            "mutation($id: ID!) { revokeConsent(id: $id) { revokedAt } }",
            json!({ "id": consent_id }),
        )
        .await;
    assert!(revoked.data()["revokeConsent"]["revokedAt"].is_string());
    let after = app
        .gql_as(Some(&agency), Some("care review"), q, json!({ "p": c.ada }))
        .await;
    assert_eq!(after.code(), Some("FORBIDDEN"));
    assert!(!after.body.to_string().contains("21508.93"));
    // Granting and revoking are audit events of their own.
    let actions = app.actions_for(&c.ada).await;
    assert!(
        actions.contains(&"consent.granted".to_owned())
            && actions.contains(&"consent.revoked".to_owned())
    );
}

#[tokio::test]
async fn a_person_sees_every_agency_read_of_their_budget_and_nobody_elses() {
    let app = spawn_app(Backend::Sqlite).await;
    let c = cast(&app).await;
    let agency = app.agency("council-asc");
    for _ in 0..2 {
        app.gql_as(
            Some(&agency),
            Some("care review"),
            "query($p: ID!) { person(id: $p) { superBudget { gross { amount } } } }",
            json!({ "p": c.ada }),
        )
        .await
        .data();
    }
    let log = app.gql_as(Some(&app.person(&c.ada)), None, "query($p: ID!) { person(id: $p) { accessLog { action actorRole agency purpose personId } } }", json!({ "p": c.ada })).await;
    let events = log.data()["person"]["accessLog"]
        .as_array()
        .unwrap()
        .clone();
    let agency_budget_reads: Vec<&Value> = events
        .iter()
        .filter(|e| e["action"] == "budget.read" && e["actorRole"] == "agency")
        .collect();
    assert_eq!(agency_budget_reads.len(), 2);
    assert!(
        agency_budget_reads
            .iter()
            .all(|e| e["agency"] == "council-asc" && e["purpose"] == "care review")
    );
    assert!(events.iter().all(|e| e["personId"] == c.ada.as_str()));
    let ben_log = app
        .gql_as(
            Some(&app.person(&c.ben)),
            None,
            "query($p: ID!) { person(id: $p) { accessLog { action actorRole } } }",
            json!({ "p": c.ben }),
        )
        .await;
    assert!(
        !ben_log.data()["person"]["accessLog"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actorRole"] == "agency")
    );
    let prying = app
        .gql_as(
            Some(&app.person(&c.ben)),
            None,
            "query($p: ID!) { person(id: $p) { accessLog { action } } }",
            json!({ "p": c.ada }),
        )
        .await;
    assert_eq!(prying.code(), Some("FORBIDDEN"));
    // An agency read without a stated purpose is refused and logs nothing.
    let before = events.len();
    let r = app
        .gql_as(
            Some(&agency),
            None,
            "query($p: ID!) { person(id: $p) { superBudget { gross { amount } } } }",
            json!({ "p": c.ada }),
        )
        .await;
    assert_eq!(r.code(), Some("BAD_USER_INPUT"));
    let again = app
        .gql_as(
            Some(&app.person(&c.ada)),
            None,
            "query($p: ID!) { person(id: $p) { accessLog { action actorRole } } }",
            json!({ "p": c.ada }),
        )
        .await;
    let agency_reads = again.data()["person"]["accessLog"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actorRole"] == "agency" && e["action"] == "budget.read")
        .count();
    assert_eq!(
        agency_reads, 2,
        "the refused read logged something ({before} events before)"
    );
}

async fn mixed_requests(app: &TestApp) -> Vec<String> {
    let c = cast(app).await;
    app.budget(&c.ada).await;
    app.gql_as(
        Some(&app.agency("council-asc")),
        Some("care review"),
        "query($p: ID!) { person(id: $p) { givenName } }",
        json!({ "p": c.ada }),
    )
    .await
    .data();
    vec![c.ada, c.ben]
}

fn broken_at(status: ChainStatus) -> (i64, String) {
    match status {
        ChainStatus::Broken { seq, reason } => (seq, reason),
        holds => panic!("tampering went unnoticed: {holds:?}"),
    }
}

#[tokio::test]
async fn the_chain_holds_and_each_kind_of_tampering_is_named() {
    let app = spawn_app(Backend::Sqlite).await;
    mixed_requests(&app).await;
    let ChainStatus::Holds { events, .. } = audit::verify(&app.db).await.unwrap() else {
        panic!("the chain should hold")
    };
    assert!(events > 60, "{events}");
    // Editing an event.
    app.execute("UPDATE audit_events SET action = 'nothing.happened' WHERE seq = 10")
        .await;
    let (seq, reason) = broken_at(audit::verify(&app.db).await.unwrap());
    assert_eq!(seq, 10);
    assert!(reason.contains("edited"), "{reason}");
}

#[tokio::test]
async fn deleting_reordering_and_truncating_are_each_detected() {
    for tamper in ["delete", "reorder", "truncate"] {
        let app = spawn_app(Backend::Sqlite).await;
        mixed_requests(&app).await;
        let ChainStatus::Holds { events, .. } = audit::verify(&app.db).await.unwrap() else {
            panic!()
        };
        match tamper {
            "delete" => app.execute("DELETE FROM audit_events WHERE seq = 7").await,
            "reorder" => {
                app.execute("UPDATE audit_events SET seq = -1 WHERE seq = 5")
                    .await;
                app.execute("UPDATE audit_events SET seq = 5 WHERE seq = 6")
                    .await;
                app.execute("UPDATE audit_events SET seq = 6 WHERE seq = -1")
                    .await;
            }
            _ => {
                app.execute(&format!(
                    "DELETE FROM audit_events WHERE seq > {}",
                    events - 3
                ))
                .await
            }
        }
        let (seq, reason) = broken_at(audit::verify(&app.db).await.unwrap());
        match tamper {
            "delete" => assert_eq!((seq, reason.contains("missing")), (7, true), "{reason}"),
            "reorder" => assert_eq!(seq, 5, "{reason}"),
            _ => assert!(
                seq == events - 2 && reason.contains("truncated"),
                "{seq} {reason}"
            ),
        }
    }
}

#[tokio::test]
async fn rewriting_the_whole_chain_after_an_anchor_is_detected() {
    let app = spawn_app(Backend::Sqlite).await;
    mixed_requests(&app).await;
    let dir = tempfile::tempdir().unwrap();
    let key = secrecy::SecretString::from("an anchor key of at least thirty-two characters");
    let anchor = audit::anchor(&app.db, dir.path(), &key).await.unwrap();
    assert!(matches!(
        audit::verify_with_anchors(&app.db, dir.path(), &key)
            .await
            .unwrap(),
        ChainStatus::Holds { .. }
    ));
    // The forger rebuilds a perfectly linked chain of the same length with other contents.
    app.execute("DELETE FROM audit_events").await;
    app.execute(&format!(
        "UPDATE audit_head SET seq = 0, hash = '{}'",
        audit::GENESIS_HASH
    ))
    .await;
    let forger = tributary::auth::Principal {
        sub: "forger".into(),
        role: Role::Admin,
        acts_for: Vec::new(),
        agency: None,
        purpose: None,
        request_id: "r".into(),
    };
    let events: Vec<audit::NewEvent<'_>> = (0..anchor.seq)
        .map(|_| audit::NewEvent {
            action: "nothing.happened",
            person_id: None,
            detail: Value::Null,
        })
        .collect();
    let txn = audit::begin_write(&app.db).await.unwrap();
    audit::append_many(txn.txn(), &forger, &events)
        .await
        .unwrap();
    txn.commit().await.unwrap();
    assert!(
        matches!(
            audit::verify(&app.db).await.unwrap(),
            ChainStatus::Holds { .. }
        ),
        "the forgery links up"
    );
    let (seq, reason) = broken_at(
        audit::verify_with_anchors(&app.db, dir.path(), &key)
            .await
            .unwrap(),
    );
    assert_eq!(seq, anchor.seq);
    assert!(reason.contains("rewritten"), "{reason}");
    // Truncating below the anchor is caught the same way.
    app.execute("DELETE FROM audit_events WHERE seq > 3").await;
    app.execute(
        "UPDATE audit_head SET seq = 3, hash = (SELECT hash FROM audit_events WHERE seq = 3)",
    )
    .await;
    let (_, reason) = broken_at(
        audit::verify_with_anchors(&app.db, dir.path(), &key)
            .await
            .unwrap(),
    );
    assert!(reason.contains("truncated"), "{reason}");
    // An altered anchor file is named.
    let path = dir.path().join(format!("anchor-{:012}.json", anchor.seq));
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&anchor.hash, &"0".repeat(64));
    std::fs::write(&path, text).unwrap();
    let (_, reason) = broken_at(
        audit::verify_with_anchors(&app.db, dir.path(), &key)
            .await
            .unwrap(),
    );
    assert!(reason.contains("bad signature"), "{reason}");
}

async fn several_writers_leave_no_fork_and_no_gap(backend: Backend) {
    let app = spawn_app(backend).await;
    let writes = (0..16).map(|i| {
        app.gql(
            tributary_tests::REGISTER,
            json!({ "input": { "givenName": "P", "familyName": format!("W{i}"), "dateOfBirth": "1980-01-01", "identifiers": [] } }),
        )
    });
    for r in futures::future::join_all(writes).await {
        r.data();
    }
    match audit::verify(&app.db).await.unwrap() {
        ChainStatus::Holds { events, .. } => assert_eq!(events, 16),
        broken => panic!("{broken:?}"),
    }
}

tributary_tests::on_both_backends!(several_writers_leave_no_fork_and_no_gap);

async fn spawn_limited() -> TestApp {
    spawn_app_with(Backend::Sqlite, |s| {
        s.limits.max_depth = 4;
        s.limits.max_complexity = 6;
        s.limits.max_aliases = 3;
        s.limits.max_directives = 2;
        s.limits.max_batch = 2;
        s.limits.max_body_bytes = 2048;
    })
    .await
}

async fn raw(app: &TestApp, content_type: &str, body: String) -> (u16, Value) {
    let r = app
        .client
        .post(format!("{}/graphql", app.address))
        .bearer_auth(app.admin())
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn code_of(body: &Value) -> Option<&str> {
    let first = if body.is_array() { &body[0] } else { body };
    first["errors"][0]["extensions"]["code"].as_str()
}

#[tokio::test]
async fn each_limit_passes_at_its_value_and_refuses_one_past_it_before_the_database() {
    let app = spawn_limited().await;
    let q = |query: &str| json!({ "query": query }).to_string();
    let cases: Vec<(&str, String, String)> = vec![
        ("depth", q("{ people(first: 1) { edges { node { id } } } }"), q("{ people(first: 1) { edges { node { identifiers { value } } } } }")),
        ("complexity", q("{ fundingStreams { id name kind } a: fundingStreams { id } }"), q("{ fundingStreams { id name kind } a: fundingStreams { id name } }")),
        ("aliases", q("{ a: fundingStreams { id } b: fundingStreams { id } c: fundingStreams { id } }"), q("{ a: fundingStreams { id } b: fundingStreams { id } c: fundingStreams { id } d: fundingStreams { id } }")),
        ("directives", q("{ fundingStreams @include(if: true) @skip(if: false) { id } }"), q("{ fundingStreams @include(if: true) @skip(if: false) @include(if: true) { id } }")),
        ("batch", json!([{ "query": "{ fundingStreams { id } }" }, { "query": "{ fundingStreams { id } }" }]).to_string(), json!([{ "query": "{ fundingStreams { id } }" }, { "query": "{ fundingStreams { id } }" }, { "query": "{ fundingStreams { id } }" }]).to_string()),
    ];
    for (name, at_limit, past) in cases {
        let (status, body) = raw(&app, "application/json", at_limit).await;
        assert_eq!(
            (status, code_of(&body)),
            (200, None),
            "{name} at its limit: {body}"
        );
        let before = app.queries.load(Ordering::SeqCst);
        let (status, body) = raw(&app, "application/json", past).await;
        assert_eq!(
            code_of(&body),
            Some("BAD_USER_INPUT"),
            "{name} past its limit: {body}"
        );
        assert!(status == 200 || status == 400, "{name}: {status}");
        assert_eq!(
            app.queries.load(Ordering::SeqCst),
            before,
            "{name}: a refused request reached the database"
        );
    }
    // The body limit: exactly 2048 bytes passes, 2049 is refused unread.
    let pad = |n: usize| {
        let base = json!({ "query": "{ fundingStreams { id } }" }).to_string();
        format!("{}{}", " ".repeat(n - base.len()), base)
    };
    assert_eq!(raw(&app, "application/json", pad(2048)).await.0, 200);
    let (status, body) = raw(&app, "application/json", pad(2049)).await;
    assert_eq!((status, code_of(&body)), (413, Some("BAD_USER_INPUT")));
    // CSRF: no text/plain or form posts, and no GraphQL over GET at all.
    let (status, body) = raw(&app, "text/plain", q("mutation { registerPerson(input: { givenName: \"X\", familyName: \"Y\", dateOfBirth: \"1990-01-01\", identifiers: [] }) { id } }")).await;
    assert_eq!((status, code_of(&body)), (415, Some("BAD_USER_INPUT")));
    let get = app
        .client
        .get(format!("{}/graphql?query=mutation%20%7B%20registerPerson(input%3A%20%7BgivenName%3A%20%22X%22%2C%20familyName%3A%20%22Y%22%2C%20dateOfBirth%3A%20%221990-01-01%22%2C%20identifiers%3A%20%5B%5D%7D)%20%7B%20id%20%7D%20%7D", app.address))
        .bearer_auth(app.admin())
        .send()
        .await
        .unwrap();
    assert!(get.status().is_client_error(), "{}", get.status());
    assert_eq!(app.count("persons").await, 0);
}

#[tokio::test]
async fn a_token_over_its_rate_is_refused_and_others_are_not() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.limits.per_token_per_second = 1;
        s.limits.per_token_burst = 2;
    })
    .await;
    let token = app.admin();
    // Six at once against a burst of two: however slow the machine, at most two more can be
    // earned back in the time the six take.
    let requests =
        (0..6).map(|_| app.gql_as(Some(&token), None, "{ fundingStreams { id } }", json!({})));
    let results = futures::future::join_all(requests).await;
    let ok = results.iter().filter(|r| r.status == 200).count();
    let limited: Vec<_> = results.iter().filter(|r| r.status == 429).collect();
    assert!(ok >= 2, "{ok} passed");
    assert!(!limited.is_empty(), "none of six was limited");
    assert_eq!(limited[0].code(), Some("RATE_LIMITED"));
    assert_eq!(ok + limited.len(), 6);
    let other = app
        .gql_as(
            Some(&app.token("someone-else", Role::Admin)),
            None,
            "{ fundingStreams { id } }",
            json!({}),
        )
        .await;
    assert_eq!(other.status, 200);
}

#[tokio::test]
async fn introspection_and_suggestions_are_off_outside_dev() {
    let app = spawn_app(Backend::Sqlite).await;
    let r = app
        .gql(
            "{ __schema { types { name } } fundingStreams { id } }",
            json!({}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body["data"]["__schema"].is_null(), "{}", r.body);
    assert_eq!(
        r.body["data"]["fundingStreams"].as_array().map(Vec::len),
        Some(4),
        "{}",
        r.body
    );
    let r = app.gql("{ fundingStream { id } }", json!({})).await;
    assert!(!r.message().contains("Did you mean"), "{}", r.message());
    let _ = stream;
}

#[tokio::test]
async fn only_auditors_read_the_chain() {
    let app = spawn_app(Backend::Sqlite).await;
    let c = cast(&app).await;
    let auditor = app.token("aud-1", Role::Auditor);
    let r = app
        .gql_as(
            Some(&auditor),
            Some("annual audit"),
            "{ auditChain { holds events } auditLog(first: 5) { seq action actorRole } }",
            json!({}),
        )
        .await;
    assert_eq!(r.data()["auditChain"]["holds"], true);
    assert_eq!(r.data()["auditLog"].as_array().unwrap().len(), 5);
    // Reading the audit log is itself recorded, with the purpose stated.
    assert_eq!(
        app.count("audit_events WHERE action = 'audit_log.read' AND purpose = 'annual audit'")
            .await,
        1
    );
    assert_eq!(
        app.count("audit_events WHERE action = 'audit_chain.read' AND actor_role = 'auditor'")
            .await,
        1
    );
    let no_purpose = app
        .gql_as(Some(&auditor), None, "{ auditChain { holds } }", json!({}))
        .await;
    assert_eq!(no_purpose.code(), Some("BAD_USER_INPUT"));
    for token in [app.person(&c.ada), app.admin(), app.agency("council-asc")] {
        let r = app
            .gql_as(
                Some(&token),
                Some("x"),
                "{ auditChain { holds } }",
                json!({}),
            )
            .await;
        assert_eq!(r.code(), Some("FORBIDDEN"));
    }
}

async fn two_hub_instances_on_one_database_keep_one_chain(backend: Backend) {
    let first = spawn_app(backend).await;
    let second = tributary_tests::spawn_second_instance(&first).await;
    let writes = (0..12).map(|i| {
        let app = if i % 2 == 0 { &first } else { &second };
        app.gql(
            tributary_tests::REGISTER,
            json!({ "input": { "givenName": "P", "familyName": format!("I{i}"), "dateOfBirth": "1980-01-01", "identifiers": [] } }),
        )
    });
    for r in futures::future::join_all(writes).await {
        r.data();
    }
    match audit::verify(&first.db).await.unwrap() {
        ChainStatus::Holds { events, .. } => assert_eq!(events, 12),
        broken => panic!("{broken:?}"),
    }
}

tributary_tests::on_both_backends!(two_hub_instances_on_one_database_keep_one_chain);

/// Reads are group-committed to the chain (on a SQLite file, by the writer's own connection)
/// while registrations write theirs, on two instances at once: one chain, no gap, and every
/// read recorded against its person.
async fn concurrent_reads_and_writes_record_every_read_in_one_chain(backend: Backend) {
    let first = spawn_app(backend).await;
    let second = tributary_tests::spawn_second_instance(&first).await;
    let ids = first.register_world().await;
    let people = &ids[..20];
    let reads = people
        .iter()
        .flat_map(|id| [(&first, id), (&second, id)])
        .map(|(app, id)| async move { app.budget(id).await });
    let writes = (0..8).map(|i| {
        let app = if i % 2 == 0 { &first } else { &second };
        async move {
            app.gql(
                tributary_tests::REGISTER,
                json!({ "input": { "givenName": "P", "familyName": format!("C{i}"), "dateOfBirth": "1980-01-01", "identifiers": [] } }),
            )
            .await
            .data();
        }
    });
    let (budgets, ()) = tokio::join!(
        futures::future::join_all(reads),
        futures::future::join_all(writes).map(|_| ())
    );
    assert!(budgets.iter().all(|b| b["net"]["amount"].is_string()));
    for id in people {
        let budget_reads = first
            .actions_for(id)
            .await
            .iter()
            .filter(|a| *a == "budget.read")
            .count();
        assert_eq!(
            budget_reads, 2,
            "two budget reads of each person are recorded"
        );
    }
    match audit::verify(&first.db).await.unwrap() {
        ChainStatus::Holds { events, .. } => {
            assert_eq!(events, first.count("audit_events").await);
        }
        broken => panic!("{broken:?}"),
    }
}

tributary_tests::on_both_backends!(concurrent_reads_and_writes_record_every_read_in_one_chain);

#[tokio::test]
async fn a_consent_for_nobody_is_not_found_and_writes_nothing() {
    let app = spawn_app(Backend::Sqlite).await;
    let ghost = "01a20e2b-0000-7000-8000-000000000001";
    let r = app
        .gql_as(
            Some(&app.person(ghost)),
            None,
            "mutation($p: ID!) { grantConsent(input: { personId: $p, agency: \"a\", streams: [\"phb\"], purpose: \"x\" }) { id } }",
            json!({ "p": ghost }),
        )
        .await;
    assert_eq!(r.code(), Some("NOT_FOUND"));
    assert_eq!(app.count("consents").await, 0);
    assert_eq!(app.count("audit_events").await, 0);
}

#[tokio::test]
async fn an_agency_cannot_change_or_replay_an_item_on_an_unconsented_stream() {
    let app = spawn_app(Backend::Sqlite).await;
    let c = cast(&app).await;
    let ada = app.person(&c.ada);
    let agency = app.agency("council-asc");
    let add = "mutation($p: ID!, $s: String!, $k: String) { addPlanItem(input: { personId: $p, description: \"physio\", purpose: \"health\", cost: \"50.00\", frequency: \"weekly\", startDate: \"2026-05-01\", shares: [{ streamId: $s, percent: \"100\" }], idempotencyKey: $k }) { id version shares { stream { id } } } }";
    let item = app
        .gql_as(
            Some(&ada),
            None,
            add,
            json!({ "p": c.ada, "s": "phb", "k": "key-1" }),
        )
        .await;
    let id = item.data()["addPlanItem"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let update = "mutation($id: ID!) { updatePlanItem(input: { id: $id, expectedVersion: 1, description: \"x\", purpose: \"x\", cost: \"1.00\", frequency: \"one_off\", startDate: \"2026-05-01\", shares: [{ streamId: \"la-social-care\", percent: \"100\" }] }) { id } }";
    let r = app
        .gql_as(
            Some(&agency),
            Some("care review"),
            update,
            json!({ "id": id }),
        )
        .await;
    assert_eq!(r.code(), Some("FORBIDDEN"), "update: {}", r.body);
    let r = app
        .gql_as(
            Some(&agency),
            Some("care review"),
            "mutation($id: ID!) { removePlanItem(id: $id, expectedVersion: 1) }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(r.code(), Some("FORBIDDEN"), "remove: {}", r.body);
    // Replaying the person's key with the agency's own stream returns nothing of the item.
    let r = app
        .gql_as(
            Some(&agency),
            Some("care review"),
            add,
            json!({ "p": c.ada, "s": "la-social-care", "k": "key-1" }),
        )
        .await;
    assert_eq!(r.code(), Some("CONFLICT"), "replay: {}", r.body);
    assert!(!r.body.to_string().contains("phb"));
    // A stale expectedVersion is refused before anything is written, whoever asks.
    let stale = update
        .replace("la-social-care", "phb")
        .replace("expectedVersion: 1", "expectedVersion: 2");
    let r = app
        .gql_as(Some(&ada), None, &stale, json!({ "id": id }))
        .await;
    assert_eq!(r.code(), Some("CONFLICT"));
    assert_eq!(app.count("plan_items").await, 1);
}

#[tokio::test]
async fn on_postgres_a_requests_reads_are_recorded_in_one_statement_and_the_chain_holds() {
    let app = spawn_app(Backend::Postgres).await;
    let ids = app.register_world().await;
    let token = app.person(&ids[0]);
    let ask = || {
        app.gql_as(
            Some(&token),
            None,
            "query($id: ID!) { person(id: $id) { id } }",
            json!({ "id": ids[0] }),
        )
    };
    let count = || app.queries.load(Ordering::SeqCst);
    // The first record takes the locked path, and the writer learns where the head is.
    app.warm_audit_writer(&ids[0]).await;
    let before = count();
    ask().await.data();
    assert_eq!(
        count() - before,
        2,
        "the person's read and one statement recording it"
    );
    // That statement runs on a group writer's own session, which plans as PostgreSQL does
    // by default (the pool's sessions plan every statement afresh): one session for each of
    // the server's two worker threads that has written a group.
    let sessions = format!(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = '{}' \
         AND datname = current_database()",
        audit::APPENDER_NAME
    );
    let open = app.scalar::<i64>(sessions.clone()).await;
    assert!((1..=2).contains(&open), "{open} appender sessions");
    // A session the server ends is replaced: a group may fail with it, as through the pool,
    // and the next is recorded on a new session.
    let ended: i64 = app
        .scalar(format!(
            "SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = '{}' AND datname = current_database()",
            audit::APPENDER_NAME
        ))
        .await;
    assert_eq!(ended, open);
    // On each thread whose session ended, the first group after may fail; the one after it
    // takes the locked path through the pool, and the next is again one statement, on a new
    // session.
    let asked = ended + 2;
    let mut recorded = 0;
    for _ in 0..asked {
        if ask().await.code().is_none() {
            recorded += 1;
        }
    }
    assert!(
        recorded >= asked - ended,
        "{recorded} of {asked} reads recorded after {ended} sessions ended"
    );
    let open = app.scalar::<i64>(sessions).await;
    assert!((1..=2).contains(&open), "{open} appender sessions");
    // Another writer moves the head: the next record finds it moved, takes the locked path,
    // and chains after that writer's event.
    let other = tributary::auth::Principal {
        sub: "test-admin".into(),
        role: Role::Admin,
        acts_for: Vec::new(),
        agency: None,
        purpose: None,
        request_id: "outside".into(),
    };
    let write = audit::begin_write(&app.db).await.unwrap();
    audit::append(
        write.txn(),
        &other,
        audit::NewEvent {
            action: "test.outside",
            person_id: None,
            detail: Value::Null,
        },
    )
    .await
    .unwrap();
    write.commit().await.unwrap();
    let before = count();
    ask().await.data();
    assert!(count() - before > 2, "the moved head went unnoticed");
    ask().await.data();
    let ChainStatus::Holds { events, .. } = audit::verify(&app.db).await.unwrap() else {
        panic!("the chain should hold")
    };
    let reads: i64 = app
        .scalar("SELECT COUNT(*) FROM audit_events WHERE action = 'person.read'")
        .await;
    assert_eq!(reads, 4 + recorded, "every answered read recorded once");
    assert!(events >= 5, "{events}");
}

/// On PostgreSQL, when the audit writer cannot open a session of its own (a server with no
/// connection to spare, say), its one-statement appends go through the pool: no request's
/// reads fail for it, and the chain holds.
#[tokio::test]
async fn on_postgres_reads_are_recorded_through_the_pool_when_the_audit_session_cannot_open() {
    let app = spawn_app(Backend::Postgres).await;
    let ids = app.register_world().await;
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    // Nothing listens on port 1: connecting is refused at once.
    let appender = audit::PgAppender::open("postgres://postgres@127.0.0.1:1/none", counter.clone())
        .expect("a PostgreSQL URL");
    let recorder = audit::ReadRecorder::start(app.db.clone(), None, Some(appender));
    let reader = tributary::auth::Principal {
        sub: "test-auditor".into(),
        role: Role::Auditor,
        acts_for: Vec::new(),
        agency: None,
        purpose: Some("checking the audit writer".into()),
        request_id: "no-session".into(),
    };
    // The first group takes the locked path; each after it would be one statement on the
    // appender's session, which cannot open.
    for id in &ids[..4] {
        recorder
            .record(&reader, vec![(Some(id.clone()), "person.read")])
            .await
            .expect("the group is written through the pool");
    }
    assert_eq!(
        counter.load(Ordering::SeqCst),
        0,
        "no statement ran on a session"
    );
    let recorded: i64 = app
        .scalar("SELECT COUNT(*) FROM audit_events WHERE request_id = 'no-session'")
        .await;
    assert_eq!(recorded, 4);
    let ChainStatus::Holds { .. } = audit::verify(&app.db).await.unwrap() else {
        panic!("the chain should hold")
    };
}
