//! Synthetic partner systems for the demo and the tests.
//!
//! [`world::World`] is a seeded population of people and the records each partner system holds
//! about them, in each partner's own published shape (`shared/upstreams/`). The same seed always
//! gives the same world, so a test can recompute any figure from the payloads independently.
//! Nothing here is real personal data.

pub mod world;

pub use world::{SyntheticPerson, World};
pub mod servers;

pub use servers::{Fault, Faults, Sandbox, Sandboxes};
