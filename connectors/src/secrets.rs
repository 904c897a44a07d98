//! Where connectors' secrets come from: the environment variables the configuration names,
//! or values handed over in process (the demo and the tests, which must not mutate the
//! environment).

use std::collections::HashMap;

use secrecy::SecretString;

/// Resolves a secret by the environment variable name the configuration gives.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    provided: HashMap<String, SecretString>,
}

impl Secrets {
    /// Secrets from the environment only.
    pub fn from_env() -> Self {
        Self::default()
    }

    /// Provides a value for `name`, taking precedence over the environment.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.provided
            .insert(name.into(), SecretString::from(value.into()));
        self
    }

    /// The secret named `name`, if set.
    pub fn get(&self, name: &str) -> Option<SecretString> {
        self.provided
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok().map(SecretString::from))
    }
}
