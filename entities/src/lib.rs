//! sea-orm entities: the rows of the hub's own tables.
//!
//! These are storage rows, not API types: nothing here derives GraphQL traits, and the API
//! converts rows into its own types. Money columns are integer pence, never floating point.

pub mod audit_event;
pub mod audit_head;
pub mod bulk_extract;
pub mod bulk_record;
pub mod consent;
pub mod funding_share;
pub mod person;
pub mod person_identifier;
pub mod plan_item;
pub mod rejected_record;
pub mod upstream_snapshot;
