//! Authentication and the registry's access rules over HTTP.

use serde_json::json;
use tributary::auth::Role;
use tributary_tests::{Backend, spawn_app};

const STREAMS: &str = "{ fundingStreams { id name kind } }";

#[tokio::test]
async fn a_request_without_a_token_is_unauthenticated() {
    let app = spawn_app(Backend::Sqlite).await;
    let response = app.gql_as(None, None, STREAMS, json!({})).await;
    assert_eq!(response.status, 401);
    assert_eq!(response.code(), Some("UNAUTHENTICATED"));
}

#[tokio::test]
async fn a_garbage_token_is_unauthenticated_without_detail() {
    let app = spawn_app(Backend::Sqlite).await;
    let response = app
        .gql_as(Some("not.a.jwt"), None, STREAMS, json!({}))
        .await;
    assert_eq!(response.code(), Some("UNAUTHENTICATED"));
    assert!(!response.message().to_lowercase().contains("signature"));
}

#[tokio::test]
async fn funding_streams_lists_the_configured_connectors() {
    let app = spawn_app(Backend::Sqlite).await;
    let response = app.gql(STREAMS, json!({})).await;
    let ids: Vec<&str> = response.data()["fundingStreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["la-social-care", "ilf", "access-to-work", "phb"]);
    assert_eq!(
        response.data()["fundingStreams"][2]["kind"],
        "access_to_work"
    );
}

const PERSON: &str = "query($id: ID!) { person(id: $id) { id familyName } }";

#[tokio::test]
async fn a_person_sees_their_own_record_and_no_one_elses() {
    let app = spawn_app(Backend::Sqlite).await;
    let ada = app.register("Ada", "Okafor", "1979-03-14", json!([])).await;
    let ben = app.register("Ben", "Evans", "1985-01-02", json!([])).await;
    let token = app.token(&ada, Role::Person);
    let own = app
        .gql_as(Some(&token), None, PERSON, json!({ "id": ada }))
        .await;
    assert_eq!(own.data()["person"]["familyName"], "Okafor");
    let other = app
        .gql_as(Some(&token), None, PERSON, json!({ "id": ben }))
        .await;
    assert_eq!(other.code(), Some("FORBIDDEN"));
    assert!(other.body["data"]["person"].is_null());
    assert!(!other.body.to_string().contains("Evans"));
}

#[tokio::test]
async fn a_representative_sees_only_the_people_they_act_for() {
    let app = spawn_app(Backend::Sqlite).await;
    let ada = app.register("Ada", "Okafor", "1979-03-14", json!([])).await;
    let ben = app.register("Ben", "Evans", "1985-01-02", json!([])).await;
    let token = app.representative(&[&ada]);
    let own = app
        .gql_as(Some(&token), None, PERSON, json!({ "id": ada }))
        .await;
    assert_eq!(own.data()["person"]["id"], ada.as_str());
    let other = app
        .gql_as(Some(&token), None, PERSON, json!({ "id": ben }))
        .await;
    assert_eq!(other.code(), Some("FORBIDDEN"));
}

#[tokio::test]
async fn an_agency_read_without_a_stated_purpose_is_refused() {
    let app = spawn_app(Backend::Sqlite).await;
    let ada = app.register("Ada", "Okafor", "1979-03-14", json!([])).await;
    let token = app.agency("council-asc");
    let response = app
        .gql_as(Some(&token), None, PERSON, json!({ "id": ada }))
        .await;
    assert_eq!(response.code(), Some("BAD_USER_INPUT"));
    assert!(response.message().contains("Tributary-Purpose"));
}

#[tokio::test]
async fn an_agency_without_consent_cannot_read_a_person() {
    let app = spawn_app(Backend::Sqlite).await;
    let ada = app.register("Ada", "Okafor", "1979-03-14", json!([])).await;
    let token = app.agency("council-asc");
    let response = app
        .gql_as(
            Some(&token),
            Some("annual review"),
            PERSON,
            json!({ "id": ada }),
        )
        .await;
    assert_eq!(response.code(), Some("FORBIDDEN"));
}

#[tokio::test]
async fn a_person_token_cannot_register_people() {
    let app = spawn_app(Backend::Sqlite).await;
    let ada = app.register("Ada", "Okafor", "1979-03-14", json!([])).await;
    let token = app.token(&ada, Role::Person);
    let response = app
        .gql_as(
            Some(&token),
            None,
            tributary_tests::REGISTER,
            json!({ "input": { "givenName": "X", "familyName": "Y", "dateOfBirth": "1990-01-01", "identifiers": [] } }),
        )
        .await;
    assert_eq!(response.code(), Some("FORBIDDEN"));
    assert_eq!(app.count("persons").await, 1);
}
