//! The hub's one error type and the one place it becomes a GraphQL `extensions.code`.
//!
//! Every message is written for the person who sent the request: what was wrong and what to do.
//! None carries personal data, and an internal failure reaches the client as INTERNAL with a
//! request id, its cause chain going only to the log.

use async_graphql::ErrorExtensions;

/// The codes API-CONTRACT.md documents, in one list so a test can check each is produced.
pub const DOCUMENTED_CODES: [&str; 7] = [
    "BAD_USER_INPUT",
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "NOT_FOUND",
    "CONFLICT",
    "UPSTREAM_UNAVAILABLE",
    "INTERNAL",
];

/// What can go wrong serving a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request's input is wrong; the message says which field and why.
    #[error("{0}")]
    BadInput(String),
    /// No usable credentials.
    #[error("authentication required: send a valid bearer token")]
    Unauthenticated,
    /// Authenticated, but not allowed this.
    #[error("{0}")]
    Forbidden(String),
    /// The thing asked for does not exist (or is not visible to the caller).
    #[error("{0}")]
    NotFound(String),
    /// The request clashes with the current state; the message says with what.
    #[error("{0}")]
    Conflict(String),
    /// A partner system could not be reached.
    #[error("{0}")]
    UpstreamUnavailable(String),
    /// Anything else. The cause goes to the log, never to the client.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// The documented `extensions.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadInput(_) => "BAD_USER_INPUT",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden(_) => "FORBIDDEN",
            Self::NotFound(_) => "NOT_FOUND",
            Self::Conflict(_) => "CONFLICT",
            Self::UpstreamUnavailable(_) => "UPSTREAM_UNAVAILABLE",
            Self::Internal(_) => "INTERNAL",
        }
    }

    /// Back to an owned error from one shared by several requests (a loader's, a merged
    /// read's), keeping its documented code and message.
    pub fn unshare(shared: std::sync::Arc<Self>) -> Self {
        match std::sync::Arc::try_unwrap(shared) {
            Ok(e) => e,
            Err(shared) => match &*shared {
                Self::BadInput(m) => Self::BadInput(m.clone()),
                Self::Forbidden(m) => Self::Forbidden(m.clone()),
                Self::NotFound(m) => Self::NotFound(m.clone()),
                Self::Conflict(m) => Self::Conflict(m.clone()),
                Self::UpstreamUnavailable(m) => Self::UpstreamUnavailable(m.clone()),
                Self::Unauthenticated => Self::Unauthenticated,
                other => Self::Internal(anyhow::anyhow!("{other:?}")),
            },
        }
    }

    /// Wraps an internal failure with context for the log.
    pub fn internal(error: impl Into<anyhow::Error>, context: &'static str) -> Self {
        Self::Internal(error.into().context(context))
    }

    /// Converts into a GraphQL error with its code; internal errors are logged with the request
    /// id and masked.
    pub fn into_graphql(self, request_id: &str) -> async_graphql::Error {
        let code = self.code();
        if let Self::Internal(cause) = &self {
            tracing::error!(request_id, error = ?cause, "internal error");
            return async_graphql::Error::new(format!(
                "internal error; quote request id {request_id} when reporting it"
            ))
            .extend_with(|_, e| {
                e.set("code", code);
                e.set("requestId", request_id);
            });
        }
        async_graphql::Error::new(self.to_string()).extend_with(|_, e| e.set("code", code))
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(error: sea_orm::DbErr) -> Self {
        Self::Internal(anyhow::Error::new(error).context("database error"))
    }
}

impl From<sea_orm::TransactionError<ApiError>> for ApiError {
    fn from(error: sea_orm::TransactionError<ApiError>) -> Self {
        match error {
            sea_orm::TransactionError::Connection(db) => db.into(),
            sea_orm::TransactionError::Transaction(api) => api,
        }
    }
}

/// Results of the hub's services.
pub type ApiResult<T> = Result<T, ApiError>;
