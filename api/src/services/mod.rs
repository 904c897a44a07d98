//! The hub's services: plain async functions over the store, knowing nothing of GraphQL.
//! Every write runs in one transaction with its audit event.

pub mod access;
pub mod budget;
pub mod bulk;
pub mod consent;
pub mod persons;
pub mod plan;
pub mod sources;
pub mod sync;
