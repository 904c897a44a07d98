//! `tributary demo` from a clean folder with no set-up: it starts, loads people and answers.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn the_demo_starts_with_no_set_up_and_answers_queries() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["demo", "--bind", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut graphql = None;
    let mut admin = None;
    let mut people_line = None;
    // Bounded: the demo prints its banner once the store is ready, or the test fails.
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("Tributary demo:") {
                people_line = Some(line.clone());
            }
            if let Some(url) = line.strip_prefix("GraphQL:") {
                graphql = Some(url.trim().to_owned());
            }
            if let Some(token) = line.strip_prefix("token admin") {
                admin = Some(token.trim().to_owned());
            }
            if line.starts_with("Stop with") {
                break;
            }
        }
    })
    .await
    .expect("the demo printed its banner in time");
    let graphql = graphql.expect("the GraphQL address is printed");
    let admin = admin.expect("an admin token is printed");
    let loaded: usize = people_line
        .expect("the people count is printed")
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert!(loaded >= 50, "only {loaded} people loaded");
    assert!(dir.path().join("demo-data/tributary-demo.db").exists());

    let client = reqwest::Client::new();
    let body: Value = client
        .post(&graphql)
        .bearer_auth(&admin)
        .json(&json!({ "query": "{ fundingStreams { id } personByIdentifier(scheme: NHS_NUMBER, value: \"943 476 5919\") { givenName identifiers { scheme value } } people(first: 100) { edges { node { id } } } }" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body.get("errors").is_none(), "{body}");
    let streams: Vec<&str> = body["data"]["fundingStreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(streams, ["la-social-care", "ilf", "access-to-work", "phb"]);
    assert_eq!(body["data"]["personByIdentifier"]["givenName"], "Ada");
    assert_eq!(
        body["data"]["personByIdentifier"]["identifiers"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        body["data"]["people"]["edges"].as_array().unwrap().len(),
        loaded
    );

    // GraphiQL is on in the demo.
    let graphiql = graphql.replace("/graphql", "/graphiql");
    let page = client.get(graphiql).send().await.unwrap();
    assert_eq!(page.status(), 200);
    child.kill().await.ok();
}
