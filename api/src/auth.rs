//! Authentication: who is calling, from a verified JWT.
//!
//! The algorithm is pinned by configuration and never taken from the token; `iss`, `aud`,
//! `exp` and `sub` are required. Every failure is the same UNAUTHENTICATED with no detail
//! that would help an attacker; the reason goes to the debug log only.

use std::fmt;
use std::str::FromStr;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::{AuthSettings, JwtAlgorithm};
use crate::error::ApiError;

/// The roles API-CONTRACT.md fixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The person themselves.
    Person,
    /// Someone acting for the people in `acts_for`.
    Representative,
    /// A partner agency, seeing what the person has agreed to share with it.
    Agency,
    /// Reads everything, changes nothing, states why.
    Auditor,
    /// A portal passing on a person's own token.
    Portal,
    /// Runs the hub: connectors and the registry, not budget contents.
    Admin,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Self; 6] = [
        Self::Person,
        Self::Representative,
        Self::Agency,
        Self::Auditor,
        Self::Portal,
        Self::Admin,
    ];

    /// The claim value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Person => "person",
            Self::Representative => "representative",
            Self::Agency => "agency",
            Self::Auditor => "auditor",
            Self::Portal => "portal",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|r| r.as_str() == s).ok_or(())
    }
}

/// The claims the hub reads and writes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience: one, or a list (the validation checks ours is in it).
    pub aud: serde_json::Value,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
    /// Not before (seconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Subject: a hub person id for `person` and `portal` tokens.
    pub sub: String,
    /// One of the roles.
    pub role: String,
    /// For a representative: the person ids they act for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acts_for: Vec<String>,
    /// For an agency: its id, to which consent is granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agency: Option<String>,
}

/// The authenticated caller of one request.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The token's subject.
    pub sub: String,
    /// The role it carries.
    pub role: Role,
    /// People a representative acts for.
    pub acts_for: Vec<String>,
    /// An agency token's agency id.
    pub agency: Option<String>,
    /// Why an agency or auditor is reading (the `Tributary-Purpose` header).
    pub purpose: Option<String>,
    /// This request's id, for the log and the audit trail.
    pub request_id: String,
}

/// Verifies tokens with configured keys.
pub struct Authenticator {
    keys: Keys,
    validation: Validation,
    /// Tokens verified before, by their whole text (signature included, so a changed token is
    /// another key): a portal sends the same token with every request, and checking its
    /// signature again is the same answer at a cost (for RS256 or ES256, more than the rest
    /// of a served budget). Its expiry is still checked at every use.
    verified: std::sync::Mutex<std::collections::HashMap<String, Verified>>,
}

/// What a verified token says, kept until it expires.
#[derive(Clone)]
struct Verified {
    sub: String,
    role: Role,
    acts_for: Vec<String>,
    agency: Option<String>,
    exp: i64,
}

impl Verified {
    /// The caller of one request with this token.
    fn principal(self, purpose: Option<String>, request_id: String) -> Principal {
        Principal {
            sub: self.sub,
            role: self.role,
            acts_for: self.acts_for,
            agency: self.agency,
            purpose,
            request_id,
        }
    }
}

/// The most verified tokens kept; the set is emptied when full.
const VERIFIED_MAX: usize = 4096;

enum Keys {
    /// One shared secret.
    Shared(DecodingKey),
    /// Public keys by `kid`.
    ByKid(std::collections::HashMap<String, DecodingKey>),
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    fn validation(settings: &AuthSettings, algorithm: Algorithm) -> Validation {
        // One algorithm, pinned by configuration: a token naming another (`none`, or HS256
        // signed with an RSA public key as the secret) is refused.
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[settings.issuer.as_str()]);
        validation.set_audience(&[settings.audience.as_str()]);
        validation.set_required_spec_claims(&["iss", "aud", "exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = settings.leeway_secs;
        validation
    }

    /// HS256 with a shared secret.
    pub fn hs256(settings: &AuthSettings, secret: &SecretString) -> Self {
        Self {
            keys: Keys::Shared(DecodingKey::from_secret(secret.expose_secret().as_bytes())),
            validation: Self::validation(settings, Algorithm::HS256),
            verified: Default::default(),
        }
    }

    /// RS256 or ES256 with the public keys of a JWKS document, by `kid`.
    pub fn from_jwks(settings: &AuthSettings, jwks_json: &str) -> anyhow::Result<Self> {
        let algorithm = match settings.algorithm {
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::ES256 => Algorithm::ES256,
            JwtAlgorithm::HS256 => anyhow::bail!("auth.jwks_file is for RS256 or ES256, not HS256"),
        };
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(jwks_json)
            .map_err(|e| anyhow::anyhow!("auth.jwks_file is not a JWKS document: {e}"))?;
        let mut keys = std::collections::HashMap::new();
        for jwk in &set.keys {
            let kid = jwk
                .common
                .key_id
                .clone()
                .ok_or_else(|| anyhow::anyhow!("auth.jwks_file: every key needs a kid"))?;
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| anyhow::anyhow!("auth.jwks_file: key {kid} cannot be used: {e}"))?;
            keys.insert(kid, key);
        }
        if keys.is_empty() {
            anyhow::bail!("auth.jwks_file holds no keys");
        }
        Ok(Self {
            keys: Keys::ByKid(keys),
            validation: Self::validation(settings, algorithm),
            verified: Default::default(),
        })
    }

    /// The authenticator the configuration asks for.
    pub fn from_settings(settings: &crate::config::Settings) -> anyhow::Result<Self> {
        match settings.auth.algorithm {
            JwtAlgorithm::HS256 => {
                let secret = settings.hs256_secret()?.ok_or_else(|| {
                    anyhow::anyhow!("configuration error: auth.hs256_secret_env must name the variable holding the HS256 secret")
                })?;
                Ok(Self::hs256(&settings.auth, &secret))
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                let path = settings.auth.jwks_file.as_ref().ok_or_else(|| {
                    anyhow::anyhow!(
                        "configuration error: auth.jwks_file is required for RS256 and ES256"
                    )
                })?;
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!(
                        "configuration error: auth.jwks_file {}: {e}",
                        path.display()
                    )
                })?;
                Self::from_jwks(&settings.auth, &text)
            }
        }
    }

    /// Verifies a bearer token and returns the caller.
    pub fn authenticate(
        &self,
        token: &str,
        purpose: Option<String>,
        request_id: String,
    ) -> Result<Principal, ApiError> {
        let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX);
        self.authenticate_at(token, purpose, request_id, now)
    }

    /// As [`Authenticator::authenticate`], with `now` (seconds since the epoch) the time a
    /// token verified before is checked against.
    fn authenticate_at(
        &self,
        token: &str,
        purpose: Option<String>,
        request_id: String,
        now: i64,
    ) -> Result<Principal, ApiError> {
        let purpose = purpose.filter(|p| !p.trim().is_empty());
        let known = self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(token)
            .cloned();
        if let Some(known) = known {
            let leeway = i64::try_from(self.validation.leeway).unwrap_or(i64::MAX);
            if known.exp < now.saturating_sub(leeway) {
                tracing::debug!(request_id, "token refused: expired");
                self.verified
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(token);
                return Err(ApiError::Unauthenticated);
            }
            return Ok(known.principal(purpose, request_id));
        }
        let refuse = |reason: &str| {
            tracing::debug!(request_id, reason, "token refused");
            ApiError::Unauthenticated
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| refuse("unreadable header"))?;
        if header
            .typ
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("JWT") && !t.eq_ignore_ascii_case("at+jwt"))
        {
            return Err(refuse("unexpected typ"));
        }
        let key = match &self.keys {
            Keys::Shared(key) => key,
            Keys::ByKid(keys) => header
                .kid
                .as_deref()
                .and_then(|kid| keys.get(kid))
                .ok_or_else(|| refuse("unknown kid"))?,
        };
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
            tracing::debug!(request_id, reason = ?e.kind(), "token refused");
            ApiError::Unauthenticated
        })?;
        let claims = data.claims;
        let role = claims.role.parse::<Role>().map_err(|()| {
            tracing::debug!(request_id, "token refused: unknown role");
            ApiError::Unauthenticated
        })?;
        if claims.sub.is_empty()
            || (role == Role::Agency && claims.agency.as_deref().unwrap_or("").is_empty())
        {
            tracing::debug!(request_id, "token refused: empty sub or agency");
            return Err(ApiError::Unauthenticated);
        }
        let known = Verified {
            sub: claims.sub,
            role,
            acts_for: claims.acts_for,
            agency: claims.agency,
            exp: claims.exp,
        };
        {
            let mut verified = self
                .verified
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
            verified.insert(token.to_owned(), known.clone());
        }
        Ok(known.principal(purpose, request_id))
    }
}

/// Signs HS256 tokens: for `tributary demo`'s development tokens and for tests.
pub struct TokenIssuer {
    key: EncodingKey,
    issuer: String,
    audience: String,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer").finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// An issuer matching the configured `iss` and `aud`.
    pub fn hs256(settings: &AuthSettings, secret: &SecretString) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.expose_secret().as_bytes()),
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
        }
    }

    /// Signs any claims as they are (for tools and tests that need unusual tokens).
    pub fn sign_raw(&self, claims: &impl Serialize) -> anyhow::Result<String> {
        self.sign_raw_with(Header::new(Algorithm::HS256), claims)
    }

    /// Signs any claims under a given header.
    pub fn sign_raw_with(&self, header: Header, claims: &impl Serialize) -> anyhow::Result<String> {
        Ok(jsonwebtoken::encode(&header, claims, &self.key)?)
    }

    /// A token for `sub` in `role`, valid for `ttl_secs`.
    pub fn issue(
        &self,
        sub: &str,
        role: Role,
        acts_for: Vec<String>,
        agency: Option<String>,
        ttl_secs: i64,
    ) -> anyhow::Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: serde_json::Value::String(self.audience.clone()),
            exp: now + ttl_secs,
            nbf: None,
            iat: Some(now),
            sub: sub.to_owned(),
            role: role.as_str().to_owned(),
            acts_for,
            agency,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.key,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AuthSettings {
        AuthSettings {
            issuer: "tributary-test".into(),
            audience: "tributary".into(),
            ..AuthSettings::default()
        }
    }

    #[test]
    fn a_token_verified_before_is_still_refused_once_expired_or_changed() {
        let secret = SecretString::from("a-test-secret-of-enough-length-for-hs256");
        let auth = Authenticator::hs256(&settings(), &secret);
        let token = TokenIssuer::hs256(&settings(), &secret)
            .issue("p-1", Role::Person, Vec::new(), None, 60)
            .unwrap();
        let now = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap();
        let caller = auth
            .authenticate_at(&token, None, "r1".into(), now)
            .unwrap();
        assert_eq!((caller.sub.as_str(), caller.role), ("p-1", Role::Person));
        // Verified again from what was kept, with this request's own purpose and id.
        let again = auth
            .authenticate_at(&token, Some("review".into()), "r2".into(), now)
            .unwrap();
        assert_eq!(
            (
                again.sub.as_str(),
                again.purpose.as_deref(),
                again.request_id.as_str()
            ),
            ("p-1", Some("review"), "r2")
        );
        // A changed signature is another text, verified afresh, and refused.
        let at = token.len() - 6;
        let was = &token[at..=at];
        let forged = format!(
            "{}{}{}",
            &token[..at],
            if was == "x" { "y" } else { "x" },
            &token[at + 1..]
        );
        assert!(
            auth.authenticate_at(&forged, None, "r3".into(), now)
                .is_err()
        );
        // Past its expiry and the leeway, the kept token is refused too.
        let leeway = i64::try_from(settings().leeway_secs).unwrap();
        let later = now + 60 + leeway + 2;
        assert!(matches!(
            auth.authenticate_at(&token, None, "r4".into(), later),
            Err(ApiError::Unauthenticated)
        ));
    }
}
