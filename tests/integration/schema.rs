//! schema.graphql is exactly what the server serves.

#[test]
fn schema_graphql_matches_the_served_schema() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schema.graphql");
    let committed = std::fs::read_to_string(path).expect("schema.graphql at the repository root");
    let served = tributary::graphql::sdl();
    assert!(
        committed == served,
        "schema.graphql differs from the served schema; regenerate it with `cargo run -q -- schema > schema.graphql`"
    );
}

#[test]
fn the_contract_names_are_in_the_schema() {
    let sdl = tributary::graphql::sdl();
    for name in [
        "scalar Date",
        "enum IdentifierScheme",
        "input IdentifierInput",
        "input RegisterPersonInput",
        "person(id: ID!): Person",
        "personByIdentifier(scheme: IdentifierScheme!, value: String!): Person",
        "fundingStreams: [FundingStream!]!",
        "registerPerson(input: RegisterPersonInput!): Person!",
        "identifiers: [Identifier!]!",
    ] {
        assert!(sdl.contains(name), "the schema lacks `{name}`");
    }
}
