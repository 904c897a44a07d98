//! Calling a partner over HTTP, with the protections every connector shares: a timeout per
//! attempt, bounded retries with jittered exponential backoff inside a retry budget,
//! `Retry-After` honoured, a circuit breaker, and a concurrency limit.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::StatusCode;
use reqwest::header::{ETAG, HeaderMap, HeaderName, HeaderValue, IF_NONE_MATCH, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use crate::breaker::{Breaker, BreakerState};
use crate::config::ConnectorSettings;
use crate::error::ConnectorError;

/// How the partner wants the hub to authenticate.
#[derive(Clone, Debug)]
pub enum PartnerAuth {
    /// No credentials.
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(SecretString),
    /// A named header carrying a key, e.g. `X-Api-Key`.
    Header(HeaderName, SecretString),
}

/// An HTTP client for a partner: connections kept alive (at most `max_idle` idle), each
/// opened within `connect_timeout`.
fn client(connect_timeout: Duration, max_idle: usize) -> Result<reqwest::Client, ConnectorError> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_max_idle_per_host(max_idle)
        .user_agent(concat!("tributary/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConnectorError::Misconfigured(format!("HTTP client: {e}")))
}

/// A partner's answer to a GET.
#[derive(Debug)]
pub enum Answer {
    /// 200 with a body.
    Body {
        /// The body.
        bytes: bytes::Bytes,
        /// The ETag, if sent.
        etag: Option<String>,
    },
    /// 404: the partner does not know the subject.
    NotFound(bytes::Bytes),
    /// 304: unchanged since the ETag given.
    NotModified,
}

/// One partner's HTTP endpoint and its protections.
#[derive(Debug)]
pub struct Partner {
    /// One client (and so one pool of kept-alive connections) per thread that calls. A
    /// pooled connection is driven by a task on the runtime that opened it: shared between the
    /// server's workers (each a runtime of its own), every call on another worker's connection
    /// would cross threads twice, the request out and the answer back, each a wake-up.
    clients: thread_local::ThreadLocal<reqwest::Client>,
    max_idle: usize,
    base_url: String,
    auth: PartnerAuth,
    timeout: Duration,
    retry_budget: Duration,
    max_attempts: usize,
    breaker: Breaker,
    permits: Semaphore,
}

impl Partner {
    /// A partner as configured.
    pub fn new(settings: &ConnectorSettings, auth: PartnerAuth) -> Result<Self, ConnectorError> {
        let timeout = Duration::from_millis(settings.timeout_ms);
        // Built once here, so a client that cannot be built is a configuration error now.
        let clients = thread_local::ThreadLocal::new();
        clients.get_or_try(|| client(timeout, settings.max_concurrency))?;
        Ok(Self {
            clients,
            max_idle: settings.max_concurrency,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            auth,
            timeout,
            retry_budget: Duration::from_millis(settings.retry_budget_ms),
            max_attempts: settings.max_attempts.max(1),
            breaker: Breaker::new(
                settings.breaker_threshold,
                Duration::from_millis(settings.breaker_cool_down_ms),
            ),
            permits: Semaphore::new(settings.max_concurrency.max(1)),
        })
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The per-attempt timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn headers(&self, if_none_match: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        match &self.auth {
            PartnerAuth::None => {}
            PartnerAuth::Bearer(token) => {
                if let Ok(value) =
                    HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
                {
                    headers.insert(reqwest::header::AUTHORIZATION, value);
                }
            }
            PartnerAuth::Header(name, key) => {
                if let Ok(value) = HeaderValue::from_str(key.expose_secret()) {
                    headers.insert(name.clone(), value);
                }
            }
        }
        if let Some(tag) = if_none_match
            && let Ok(value) = HeaderValue::from_str(tag)
        {
            headers.insert(IF_NONE_MATCH, value);
        }
        headers
    }

    /// GETs `path` (after the base URL), retrying what is worth retrying within the budget.
    pub async fn get(
        &self,
        path: &str,
        if_none_match: Option<&str>,
    ) -> Result<Answer, ConnectorError> {
        if !self.breaker.allow() {
            return Err(ConnectorError::CircuitOpen);
        }
        let _permit =
            self.permits.acquire().await.map_err(|_| {
                ConnectorError::Unavailable("the connector is shutting down".into())
            })?;
        let deadline = Instant::now() + self.retry_budget;
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(self.max_attempts.saturating_sub(1))
            .with_jitter()
            .build();
        let url = format!("{}{}", self.base_url, path);
        loop {
            // No attempt outlives the budget: the last one gets only what is left of it.
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = self.timeout.min(left.max(Duration::from_millis(1)));
            let outcome = self.attempt(&url, if_none_match, timeout).await;
            let (error, retry_after) = match outcome {
                Attempt::Done(answer) => {
                    self.breaker.success();
                    return Ok(answer);
                }
                Attempt::Fatal(error) => {
                    self.breaker.failure();
                    return Err(error);
                }
                Attempt::Retry(error, retry_after) => (error, retry_after),
            };
            let Some(backoff) = delays.next() else {
                self.breaker.failure();
                return Err(error);
            };
            let wait = retry_after.map_or(backoff, |after| after.max(backoff));
            if Instant::now() + wait > deadline {
                self.breaker.failure();
                return Err(error);
            }
            tracing::debug!(?wait, %error, "retrying the partner");
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(&self, url: &str, if_none_match: Option<&str>, timeout: Duration) -> Attempt {
        let client = match self
            .clients
            .get_or_try(|| client(self.timeout, self.max_idle))
        {
            Ok(client) => client,
            Err(error) => return Attempt::Fatal(error),
        };
        let request = client.get(url).headers(self.headers(if_none_match));
        let result = tokio::time::timeout(timeout, async {
            let response = request.send().await?;
            let status = response.status();
            let etag = response
                .headers()
                .get(ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, etag, retry_after, bytes))
        })
        .await;
        match result {
            Err(_) => Attempt::Retry(ConnectorError::Timeout(timeout), None),
            Ok(Err(e)) => Attempt::Retry(
                ConnectorError::Unavailable(if e.is_connect() {
                    "connection refused or failed".into()
                } else if e.is_body() || e.is_decode() {
                    "the answer was cut off".into()
                } else {
                    "the request failed".into()
                }),
                None,
            ),
            Ok(Ok((status, etag, retry_after, bytes))) => match status {
                StatusCode::OK => Attempt::Done(Answer::Body { bytes, etag }),
                StatusCode::NOT_MODIFIED => Attempt::Done(Answer::NotModified),
                StatusCode::NOT_FOUND => Attempt::Done(Answer::NotFound(bytes)),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    Attempt::Fatal(ConnectorError::Unauthorized)
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    Attempt::Retry(ConnectorError::RateLimited { retry_after }, retry_after)
                }
                s if s.is_server_error() => Attempt::Retry(
                    ConnectorError::Unavailable(format!("HTTP {}", s.as_u16())),
                    None,
                ),
                s => Attempt::Fatal(ConnectorError::Malformed(format!(
                    "unexpected HTTP status {}",
                    s.as_u16()
                ))),
            },
        }
    }
}

enum Attempt {
    Done(Answer),
    Retry(ConnectorError, Option<Duration>),
    Fatal(ConnectorError),
}

/// Percent-encodes one URL path segment (everything but RFC 3986's unreserved characters), so
/// an identifier can never change the path it is put in.
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Whether a 404 carries the partner's documented "not found" body, e.g.
/// `{"error": "client_not_found"}`. Any other 404 (a wrong base URL, a proxy) is not an answer
/// about the person.
pub fn documented_not_found(body: &[u8], error: &str) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(|e| e == error))
        .unwrap_or(false)
}

/// The records of a person the partner does not know, or Malformed for an undocumented 404.
pub fn not_found(
    subject_key: String,
    body: &[u8],
    error: &str,
) -> Result<crate::model::PersonRecords, ConnectorError> {
    if documented_not_found(body, error) {
        Ok(crate::model::PersonRecords {
            subject_key,
            ..crate::model::PersonRecords::default()
        })
    } else {
        Err(ConnectorError::Malformed(
            "HTTP 404 without the documented error body; check the connector's base_url".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("CL-104233"), "CL-104233");
        assert_eq!(segment("CL/1 2"), "CL%2F1%202");
        assert_eq!(segment("../x"), "..%2Fx");
    }

    #[test]
    fn only_the_documented_404_means_unknown() {
        assert!(documented_not_found(
            br#"{"error": "client_not_found"}"#,
            "client_not_found"
        ));
        assert!(!documented_not_found(
            b"<html>Not Found</html>",
            "client_not_found"
        ));
        assert!(not_found("K".into(), b"", "patient_not_found").is_err());
    }
}
