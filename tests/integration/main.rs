//! End-to-end tests: one binary, so the workspace links once.

#![expect(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod access;
mod auth;
mod budget;
mod connectors;
mod registry;
mod schema;
