//! Why a connector could not answer. Messages never carry personal data: no identifier values.

use std::time::Duration;

/// A connector's failure to get an answer from its partner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectorError {
    /// The partner did not answer within the timeout (after any retries).
    #[error("the partner did not answer within {0:?}")]
    Timeout(Duration),
    /// The partner could not be reached, or answered with a server error.
    #[error("the partner is unavailable: {0}")]
    Unavailable(String),
    /// The partner is rate-limiting the hub.
    #[error("the partner is rate-limiting requests (retry after {retry_after:?})")]
    RateLimited {
        /// What its Retry-After said.
        retry_after: Option<Duration>,
    },
    /// The partner refused the hub's credentials.
    #[error(
        "the partner refused the hub's credentials (HTTP 401); check the configured token or key"
    )]
    Unauthorized,
    /// The partner's answer is not what its published interface says.
    #[error("the partner's answer is malformed: {0}")]
    Malformed(String),
    /// Recent failures opened the circuit breaker; the partner is not being called.
    #[error("the partner is failing and is being given time to recover (circuit open)")]
    CircuitOpen,
    /// The connector cannot run as configured.
    #[error("the connector is misconfigured: {0}")]
    Misconfigured(String),
    /// A bulk extract was refused whole (its header is wrong); the previous one stays in use.
    #[error("the extract was refused: {0}")]
    ExtractRefused(String),
}
