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
/// opened within `connect_timeout`, and no redirect followed. No partner's published interface
/// redirects; following one would send the partner's credentials wherever it points (reqwest
/// drops `Authorization` on the way to another host, not a key in a header of the partner's
/// own name, such as `X-Api-Key`). A redirect is reported as the unexpected status it is.
fn client(connect_timeout: Duration, max_idle: usize) -> Result<reqwest::Client, ConnectorError> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_max_idle_per_host(max_idle)
        .redirect(reqwest::redirect::Policy::none())
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
    /// The base URL, parsed once: each request's URL is this one with its path and query set,
    /// not a string parsed afresh (scheme, host and all) three times a view.
    base: reqwest::Url,
    /// The credentials' header, built once (marked sensitive, so it is never logged); `None`
    /// without credentials, or where they cannot be a header value (the partner then answers
    /// 401, reported as Unauthorized, as before).
    auth: Option<(HeaderName, HeaderValue)>,
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
        let base = reqwest::Url::parse(settings.base_url.trim_end_matches('/'))
            .ok()
            .filter(|u| u.has_host() && !u.cannot_be_a_base())
            .ok_or_else(|| {
                ConnectorError::Misconfigured(format!(
                    "{}: base_url is not an http(s) URL with a host",
                    settings.id.0
                ))
            })?;
        Ok(Self {
            clients,
            max_idle: settings.max_concurrency,
            base,
            auth: auth_header(&auth),
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

    /// The URL of `path` (after the base URL's own path; it may end in a query).
    fn url(&self, path: &str) -> reqwest::Url {
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path, None),
        };
        let mut url = self.base.clone();
        let mut full = String::with_capacity(self.base.path().len() + path.len());
        full.push_str(self.base.path().trim_end_matches('/'));
        full.push_str(path);
        url.set_path(&full);
        url.set_query(query);
        url
    }

    fn headers(&self, if_none_match: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some((name, value)) = &self.auth {
            headers.insert(name.clone(), value.clone());
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
        let url = self.url(path);
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

    async fn attempt(
        &self,
        url: &reqwest::Url,
        if_none_match: Option<&str>,
        timeout: Duration,
    ) -> Attempt {
        let client = match self
            .clients
            .get_or_try(|| client(self.timeout, self.max_idle))
        {
            Ok(client) => client,
            Err(error) => return Attempt::Fatal(error),
        };
        let request = client.get(url.clone()).headers(self.headers(if_none_match));
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

/// The header `auth` sends, if it can be one.
fn auth_header(auth: &PartnerAuth) -> Option<(HeaderName, HeaderValue)> {
    let (name, value) = match auth {
        PartnerAuth::None => return None,
        PartnerAuth::Bearer(token) => (
            reqwest::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", token.expose_secret())),
        ),
        PartnerAuth::Header(name, key) => {
            (name.clone(), HeaderValue::from_str(key.expose_secret()))
        }
    };
    let mut value = value.ok()?;
    value.set_sensitive(true);
    Some((name, value))
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

    fn partner(base_url: &str, auth: PartnerAuth) -> Result<Partner, ConnectorError> {
        let settings = ConnectorSettings::new("phb", crate::config::ConnectorKind::Phb, base_url);
        Partner::new(&settings, auth)
    }

    #[test]
    fn a_request_url_is_the_base_and_the_path_as_one_string_would_parse() {
        for base in [
            "http://127.0.0.1:9101",
            "http://127.0.0.1:9101/",
            "https://partner.example/api/",
            "https://partner.example/api/v2",
        ] {
            let p = partner(base, PartnerAuth::None).unwrap();
            for path in [
                "/phb/v1/patients/9434765919/budgets",
                "/api/v1/clients?nhs_number=943%20476%205919",
                "/api/v1/clients/CL%2F1%202/personal-budgets",
                &format!("/atw/v2/claimants/{}/awards", segment("..")),
                &format!("/x/{}/y", segment("../..")),
                "/q?a=1&b=%26",
            ] {
                let whole = format!("{}{}", base.trim_end_matches('/'), path);
                assert_eq!(
                    p.url(path),
                    reqwest::Url::parse(&whole).unwrap(),
                    "{base} + {path}"
                );
            }
        }
    }

    #[test]
    fn a_base_url_that_is_not_a_url_is_a_configuration_error() {
        for base in ["http://exa mple", "mailto:x@y.z", "nonsense"] {
            assert!(
                matches!(
                    partner(base, PartnerAuth::None),
                    Err(ConnectorError::Misconfigured(_))
                ),
                "{base}"
            );
        }
    }

    #[test]
    fn credentials_go_in_a_sensitive_header_built_once() {
        let secret = |s: &str| SecretString::from(s.to_owned());
        let p = partner("http://h:1", PartnerAuth::Bearer(secret("t0k"))).unwrap();
        let headers = p.headers(Some("\"v1\""));
        let auth = headers.get(reqwest::header::AUTHORIZATION).unwrap();
        assert_eq!(auth, "Bearer t0k");
        assert!(auth.is_sensitive());
        assert!(!format!("{p:?}").contains("t0k"), "{p:?}");
        assert_eq!(headers.get(IF_NONE_MATCH).unwrap(), "\"v1\"");
        let name = HeaderName::from_static("x-api-key");
        let p = partner("http://h:1", PartnerAuth::Header(name.clone(), secret("k"))).unwrap();
        assert_eq!(p.headers(None).get(&name).unwrap(), "k");
        assert!(p.headers(None).get(&name).unwrap().is_sensitive());
        // A key that cannot be a header value is not sent (the partner answers 401).
        let p = partner("http://h:1", PartnerAuth::Bearer(secret("a\nb"))).unwrap();
        assert!(p.headers(None).is_empty());
        assert!(
            partner("http://h:1", PartnerAuth::None)
                .unwrap()
                .headers(None)
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed_and_the_key_goes_nowhere_else() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Where a redirect would lead: a listener that is never answered, whose backlog shows
        // whether anything connected.
        let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        elsewhere.set_nonblocking(true).unwrap();
        let elsewhere_at = elsewhere.local_addr().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let redirecting = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0; 4096];
            let read = socket.read(&mut request).await.unwrap();
            socket
                .write_all(
                    format!(
                        "HTTP/1.1 302 Found\r\nLocation: http://{elsewhere_at}/collect\r\n\
                         Content-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
            String::from_utf8_lossy(&request[..read]).to_lowercase()
        });
        let name = HeaderName::from_static("x-api-key");
        let key = SecretString::from("k3y".to_owned());
        let p = partner(&format!("http://{at}"), PartnerAuth::Header(name, key)).unwrap();
        let answer = p.get("/clients/CL-1", None).await;
        assert!(
            matches!(&answer, Err(ConnectorError::Malformed(m)) if m.contains("302")),
            "{answer:?}"
        );
        assert!(redirecting.await.unwrap().contains("x-api-key: k3y"));
        // The answer came without a second request: nothing ever connected elsewhere.
        assert_eq!(
            elsewhere.accept().map_err(|e| e.kind()).err(),
            Some(std::io::ErrorKind::WouldBlock)
        );
    }

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
