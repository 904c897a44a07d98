//! The person registry over real HTTP, each test on SQLite and on PostgreSQL.

use serde_json::{Value, json};
use tributary::audit::{self, ChainStatus};
use tributary_tests::{Backend, REGISTER, TestApp, on_both_backends, spawn_app};

const NHS: &str = "943 476 5919";
const NHS_NORMALISED: &str = "9434765919";
const OTHER_NHS: &str = "4010232137";

const BY_IDENTIFIER: &str = "query($scheme: IdentifierScheme!, $value: String!) {
  personByIdentifier(scheme: $scheme, value: $value) { id givenName identifiers { scheme value } }
}";
const LINK: &str = "mutation($id: ID!, $scheme: IdentifierScheme!, $value: String!) {
  linkIdentifier(personId: $id, identifier: { scheme: $scheme, value: $value }) { id version identifiers { scheme value linkedBy } }
}";
const UNLINK: &str = "mutation($id: ID!, $scheme: IdentifierScheme!, $value: String!) {
  unlinkIdentifier(personId: $id, identifier: { scheme: $scheme, value: $value }) { id version identifiers { scheme value } }
}";
const PEOPLE: &str = "query($first: Int, $after: String) {
  people(first: $first, after: $after) { edges { cursor node { id familyName } } pageInfo { hasNextPage endCursor } }
}";

fn ada_identifiers() -> Value {
    json!([
        { "scheme": "NHS_NUMBER", "value": NHS },
        { "scheme": "NINO", "value": "ab 12 34 56 c" },
        { "scheme": "COUNCIL_CLIENT_ID", "value": "CL-104233" },
        { "scheme": "ILF_REFERENCE", "value": "ilf-000317" },
    ])
}

async fn register_ada(app: &TestApp) -> String {
    app.register("Ada", "Okafor", "1979-03-14", ada_identifiers())
        .await
}

async fn lookup(app: &TestApp, scheme: &str, value: &str) -> tributary_tests::GqlResponse {
    app.gql(BY_IDENTIFIER, json!({ "scheme": scheme, "value": value }))
        .await
}

async fn registering_stores_normalised_identifiers(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .gql(
            REGISTER,
            json!({ "input": { "givenName": " Ada ", "familyName": "Okafor", "dateOfBirth": "1979-03-14", "identifiers": ada_identifiers() } }),
        )
        .await;
    let person = &response.data()["registerPerson"];
    assert_eq!(person["givenName"], "Ada");
    assert_eq!(person["dateOfBirth"], "1979-03-14");
    assert_eq!(person["version"], 1);
    let identifiers: Vec<(String, String)> = person["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["scheme"].as_str().unwrap().to_owned(),
                i["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        identifiers,
        [
            ("NHS_NUMBER".to_owned(), NHS_NORMALISED.to_owned()),
            ("NINO".to_owned(), "AB123456C".to_owned()),
            ("COUNCIL_CLIENT_ID".to_owned(), "CL-104233".to_owned()),
            ("ILF_REFERENCE".to_owned(), "ILF-000317".to_owned()),
        ]
    );
    assert_eq!(person["identifiers"][0]["linkedBy"], "test-admin");
}

async fn a_person_is_found_by_each_identifier_scheme(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = register_ada(&app).await;
    app.register(
        "Ben",
        "Evans",
        "1985-01-02",
        json!([{ "scheme": "NHS_NUMBER", "value": OTHER_NHS }]),
    )
    .await;
    for (scheme, value) in [
        ("NHS_NUMBER", "9434765919"),
        ("NHS_NUMBER", "943 476 5919"),
        ("NINO", "AB123456C"),
        ("NINO", "ab 12 34 56 c"),
        ("COUNCIL_CLIENT_ID", "CL-104233"),
        ("ILF_REFERENCE", "ILF-000317"),
    ] {
        let response = lookup(&app, scheme, value).await;
        assert_eq!(
            response.data()["personByIdentifier"]["id"],
            id.as_str(),
            "{scheme} {value}"
        );
    }
    let by_id = app
        .gql(
            "query($id: ID!) { person(id: $id) { givenName } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(by_id.data()["person"]["givenName"], "Ada");
}

async fn linking_and_unlinking_an_identifier(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.register("Ben", "Evans", "1985-01-02", json!([])).await;
    let linked = app
        .gql(
            LINK,
            json!({ "id": id, "scheme": "NHS_NUMBER", "value": OTHER_NHS }),
        )
        .await;
    assert_eq!(linked.data()["linkIdentifier"]["version"], 2);
    assert_eq!(
        linked.data()["linkIdentifier"]["identifiers"][0]["value"],
        OTHER_NHS
    );
    assert_eq!(
        lookup(&app, "NHS_NUMBER", OTHER_NHS).await.data()["personByIdentifier"]["id"],
        id.as_str()
    );

    // Linking the same identifier again changes nothing.
    let again = app
        .gql(
            LINK,
            json!({ "id": id, "scheme": "NHS_NUMBER", "value": OTHER_NHS }),
        )
        .await;
    assert_eq!(again.data()["linkIdentifier"]["version"], 2);

    let unlinked = app
        .gql(
            UNLINK,
            json!({ "id": id, "scheme": "NHS_NUMBER", "value": OTHER_NHS }),
        )
        .await;
    assert_eq!(unlinked.data()["unlinkIdentifier"]["version"], 3);
    assert_eq!(
        unlinked.data()["unlinkIdentifier"]["identifiers"],
        json!([])
    );
    assert_eq!(
        lookup(&app, "NHS_NUMBER", OTHER_NHS).await.code(),
        Some("NOT_FOUND")
    );
    assert_eq!(app.count("person_identifiers").await, 0);
}

async fn an_identifier_linked_to_another_person_is_a_conflict(backend: Backend) {
    let app = spawn_app(backend).await;
    let ada = register_ada(&app).await;
    let ben = app.register("Ben", "Evans", "1985-01-02", json!([])).await;
    let response = app
        .gql(
            LINK,
            json!({ "id": ben, "scheme": "NINO", "value": "AB123456C" }),
        )
        .await;
    assert_eq!(response.code(), Some("CONFLICT"));
    assert!(
        response.message().contains("National Insurance number"),
        "{}",
        response.message()
    );
    let body = response.body.to_string();
    assert!(
        !body.contains(&ada) && !body.contains("Okafor") && !body.contains("AB123456C"),
        "{body}"
    );

    // Registering someone with a taken identifier writes nothing at all.
    let before = (
        app.count("persons").await,
        app.count("person_identifiers").await,
        app.count("audit_events").await,
    );
    let response = app
        .gql(
            REGISTER,
            json!({ "input": { "givenName": "Cy", "familyName": "Nowak", "dateOfBirth": "1990-05-05", "identifiers": [
                { "scheme": "NHS_NUMBER", "value": OTHER_NHS },
                { "scheme": "COUNCIL_CLIENT_ID", "value": "CL-104233" }
            ] } }),
        )
        .await;
    assert_eq!(response.code(), Some("CONFLICT"));
    assert!(response.message().contains("council client id"));
    let after = (
        app.count("persons").await,
        app.count("person_identifiers").await,
        app.count("audit_events").await,
    );
    assert_eq!(before, after);
    assert_eq!(
        lookup(&app, "NHS_NUMBER", OTHER_NHS).await.code(),
        Some("NOT_FOUND")
    );
}

async fn a_person_holds_at_most_one_nhs_number(backend: Backend) {
    let app = spawn_app(backend).await;
    let ada = register_ada(&app).await;
    let response = app
        .gql(
            LINK,
            json!({ "id": ada, "scheme": "NHS_NUMBER", "value": OTHER_NHS }),
        )
        .await;
    assert_eq!(response.code(), Some("CONFLICT"));
    assert!(response.message().contains("unlink"));
    // A second council client id is fine: two councils may each know the person.
    let response = app
        .gql(
            LINK,
            json!({ "id": ada, "scheme": "COUNCIL_CLIENT_ID", "value": "CL-999" }),
        )
        .await;
    assert_eq!(
        response.data()["linkIdentifier"]["identifiers"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
}

async fn invalid_identifiers_are_refused_and_nothing_is_written(backend: Backend) {
    let app = spawn_app(backend).await;
    for (scheme, value, hint) in [
        ("NHS_NUMBER", "943 476 5918", "Modulus 11"),
        ("NHS_NUMBER", "94347659", "10 digits"),
        ("NINO", "QQ 12 34 56 C", "prefix"),
        ("NINO", "AB123456E", "final letter"),
        ("ILF_REFERENCE", "REF-9", "ILF-"),
    ] {
        let response = app
            .gql(
                REGISTER,
                json!({ "input": { "givenName": "Ada", "familyName": "Okafor", "dateOfBirth": "1979-03-14", "identifiers": [
                    { "scheme": "COUNCIL_CLIENT_ID", "value": "CL-1" },
                    { "scheme": scheme, "value": value }
                ] } }),
            )
            .await;
        assert_eq!(response.code(), Some("BAD_USER_INPUT"), "{value}");
        assert!(
            response.message().contains(hint),
            "{value}: {}",
            response.message()
        );
        assert!(
            response.message().contains(scheme),
            "{}",
            response.message()
        );
        assert!(
            !response.message().contains(value),
            "the message echoes the value: {}",
            response.message()
        );
    }
    assert_eq!(app.count("persons").await, 0);
    assert_eq!(app.count("person_identifiers").await, 0);
    assert_eq!(app.count("audit_events").await, 0);

    // The same rules guard linking and looking up.
    let ben = app.register("Ben", "Evans", "1985-01-02", json!([])).await;
    let response = app
        .gql(
            LINK,
            json!({ "id": ben, "scheme": "NHS_NUMBER", "value": "1234567890" }),
        )
        .await;
    assert_eq!(response.code(), Some("BAD_USER_INPUT"));
    assert_eq!(
        lookup(&app, "NINO", "nonsense").await.code(),
        Some("BAD_USER_INPUT")
    );
    assert_eq!(app.count("person_identifiers").await, 0);
}

async fn unknown_ids_are_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let ghost = "01a20e2b-0000-7000-8000-000000000000";
    for id in [ghost, "not-an-id"] {
        let response = app
            .gql(
                "query($id: ID!) { person(id: $id) { id } }",
                json!({ "id": id }),
            )
            .await;
        assert_eq!(response.code(), Some("NOT_FOUND"), "{id}");
        assert!(response.body["data"]["person"].is_null());
        let response = app
            .gql(
                LINK,
                json!({ "id": id, "scheme": "NINO", "value": "AB123456C" }),
            )
            .await;
        assert_eq!(response.code(), Some("NOT_FOUND"), "{id}");
    }
    let ben = app.register("Ben", "Evans", "1985-01-02", json!([])).await;
    let response = app
        .gql(
            UNLINK,
            json!({ "id": ben, "scheme": "NINO", "value": "AB123456C" }),
        )
        .await;
    assert_eq!(response.code(), Some("NOT_FOUND"));
    assert!(
        response
            .message()
            .contains("no such National Insurance number")
    );
    assert_eq!(
        lookup(&app, "NHS_NUMBER", NHS).await.code(),
        Some("NOT_FOUND")
    );
    assert_eq!(app.count("person_identifiers").await, 0);
}

async fn malformed_input_is_bad_user_input_and_writes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    for (dob, given) in [
        ("1990-02-30", "Ada"),
        ("14/03/1979", "Ada"),
        ("1979-3-14", "Ada"),
        ("2999-01-01", "Ada"),
        ("1979-03-14", "   "),
    ] {
        let response = app
            .gql(
                REGISTER,
                json!({ "input": { "givenName": given, "familyName": "Okafor", "dateOfBirth": dob, "identifiers": [] } }),
            )
            .await;
        assert_eq!(
            response.code(),
            Some("BAD_USER_INPUT"),
            "{dob} {}",
            response.body
        );
        assert!(!response.message().is_empty());
    }
    assert_eq!(app.count("persons").await, 0);
}

async fn people_are_paged_with_cursors(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut registered = Vec::new();
    for (i, family) in ["A", "B", "C", "D", "E"].iter().enumerate() {
        registered.push(
            app.register("P", family, &format!("1980-01-0{}", i + 1), json!([]))
                .await,
        );
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let response = app.gql(PEOPLE, json!({ "first": 2, "after": after })).await;
        let people = &response.data()["people"];
        for edge in people["edges"].as_array().unwrap() {
            seen.push(edge["node"]["id"].as_str().unwrap().to_owned());
        }
        pages += 1;
        if !people["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            break;
        }
        after = Some(people["pageInfo"]["endCursor"].as_str().unwrap().to_owned());
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, registered);

    for first in [0, 101, -1] {
        let response = app.gql(PEOPLE, json!({ "first": first })).await;
        assert_eq!(response.code(), Some("BAD_USER_INPUT"), "{first}");
    }
    let response = app
        .gql(PEOPLE, json!({ "first": 100, "after": "bogus" }))
        .await;
    assert_eq!(response.code(), Some("BAD_USER_INPUT"));
}

async fn two_simultaneous_links_of_one_identifier_leave_exactly_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut people = Vec::new();
    for family in ["A", "B", "C", "D"] {
        people.push(app.register("P", family, "1980-01-01", json!([])).await);
    }
    let attempts = people.iter().map(|id| {
        app.gql(
            LINK,
            json!({ "id": id, "scheme": "NINO", "value": "CE654321A" }),
        )
    });
    let results = futures::future::join_all(attempts).await;
    let won = results
        .iter()
        .filter(|r| r.body.get("errors").is_none())
        .count();
    let conflicts = results
        .iter()
        .filter(|r| r.code() == Some("CONFLICT"))
        .count();
    assert_eq!((won, conflicts), (1, 3), "{results:?}");
    assert_eq!(app.count("person_identifiers").await, 1);
    assert!(matches!(
        audit::verify(&app.db).await.unwrap(),
        ChainStatus::Holds { events: 5, .. }
    ));
}

async fn every_registry_change_is_audited_and_the_chain_holds(backend: Backend) {
    let app = spawn_app(backend).await;
    let ada = register_ada(&app).await;
    app.gql(
        UNLINK,
        json!({ "id": ada, "scheme": "ILF_REFERENCE", "value": "ILF-000317" }),
    )
    .await
    .data();
    app.gql(
        LINK,
        json!({ "id": ada, "scheme": "ILF_REFERENCE", "value": "ILF-000318" }),
    )
    .await
    .data();
    // A refused change writes no event.
    let refused = app
        .gql(
            LINK,
            json!({ "id": ada, "scheme": "NHS_NUMBER", "value": OTHER_NHS }),
        )
        .await;
    assert_eq!(refused.code(), Some("CONFLICT"));
    match audit::verify(&app.db).await.unwrap() {
        ChainStatus::Holds { events, .. } => assert_eq!(events, 3),
        broken => panic!("the chain is broken: {broken:?}"),
    }
    // The audit detail names schemes, never values.
    let detail_has_value = app
        .count("audit_events WHERE detail LIKE '%AB123456C%' OR detail LIKE '%Okafor%'")
        .await;
    assert_eq!(detail_has_value, 0);
}

async fn bulk_registration_goes_in_batches_and_refuses_a_batch_whole(backend: Backend) {
    use tributary::services::persons::{self, NewPerson, REGISTER_BATCH};
    let app = spawn_app(backend).await;
    let loader = tributary::auth::Principal {
        sub: "bulk-loader".into(),
        role: tributary::auth::Role::Admin,
        acts_for: Vec::new(),
        agency: None,
        purpose: Some("onboarding".into()),
        request_id: "bulk".into(),
    };
    let world = sandboxes::world::World::generate(7, REGISTER_BATCH + 20);
    let person = |p: &sandboxes::world::SyntheticPerson| NewPerson {
        given_name: p.given_name.clone(),
        family_name: p.family_name.clone(),
        date_of_birth: p.date_of_birth,
        identifiers: vec![
            (
                connectors::IdentifierScheme::NhsNumber,
                p.nhs_number.clone(),
            ),
            (connectors::IdentifierScheme::Nino, p.nino.clone()),
        ],
    };
    // Two full batches' worth: every person lands, each with one audit event.
    let inputs: Vec<NewPerson> = world.people.iter().map(person).collect();
    let ids = persons::register_many(&app.db, &loader, inputs)
        .await
        .unwrap();
    assert_eq!(ids.len(), REGISTER_BATCH + 20);
    assert_eq!(app.count("persons").await, (REGISTER_BATCH + 20) as i64);
    match audit::verify(&app.db).await.unwrap() {
        ChainStatus::Holds { events, .. } => assert_eq!(events, (REGISTER_BATCH + 20) as i64),
        broken => panic!("the chain is broken: {broken:?}"),
    }
    // A sync walks the registry a page at a time: everyone once, in order, nobody twice.
    let mut seen = std::collections::HashSet::new();
    let mut after: Option<String> = None;
    loop {
        let page = persons::identifiers_page(&app.db, after.as_deref(), 100)
            .await
            .unwrap();
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (id, identifiers) in page {
            assert_eq!(
                identifiers.len(),
                2,
                "each person's two identifiers come along"
            );
            assert!(seen.insert(id), "a person came twice");
        }
    }
    assert_eq!(seen.len(), REGISTER_BATCH + 20);
    assert_eq!(
        persons::count(&app.db).await.unwrap(),
        (REGISTER_BATCH + 20) as u64
    );
    // A new person followed by one whose NHS number is taken: the batch is refused whole,
    // naming the position, and neither is written.
    let fresh = sandboxes::world::World::generate(8, 1);
    // (Person 0 of every generated world is the upstream pages' own example, so take another.)
    let mut taken = person(&fresh.people[1]);
    taken.identifiers.truncate(1);
    taken.identifiers[0].1 = world.people[3].nhs_number.clone();
    let refused = persons::register_many(&app.db, &loader, vec![person(&fresh.people[2]), taken])
        .await
        .unwrap_err();
    assert!(
        matches!(refused, tributary::error::ApiError::Conflict(ref m) if m.starts_with("person 1:")),
        "{refused:?}"
    );
    assert_eq!(app.count("persons").await, (REGISTER_BATCH + 20) as i64);
}

on_both_backends!(
    registering_stores_normalised_identifiers,
    a_person_is_found_by_each_identifier_scheme,
    linking_and_unlinking_an_identifier,
    an_identifier_linked_to_another_person_is_a_conflict,
    a_person_holds_at_most_one_nhs_number,
    invalid_identifiers_are_refused_and_nothing_is_written,
    unknown_ids_are_not_found,
    malformed_input_is_bad_user_input_and_writes_nothing,
    people_are_paged_with_cursors,
    two_simultaneous_links_of_one_identifier_leave_exactly_one,
    every_registry_change_is_audited_and_the_chain_holds,
    bulk_registration_goes_in_batches_and_refuses_a_batch_whole,
);
