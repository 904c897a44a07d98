//! The budget arithmetic of BUDGET-RULES.md, as pure functions over plain types: testable
//! without a database or a server, and the only place any figure is worked out.

pub mod assemble;
pub mod period;
pub mod split;
