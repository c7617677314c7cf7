//! Who may publish and who may read private channels: bearer keys (compared in constant
//! time, optionally scoped to channel patterns) and JWTs whose claims list channels.
//!
//! A JWT carries its grants in a `herald` claim:
//! `{"exp": ..., "herald": {"publish": ["news", "orders:*"], "subscribe": ["user:42"]}}`.
//! Patterns use `*` (any run of characters) and `?` (one character).

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use wildmatch::WildMatch;

use crate::config::AuthConfig;

/// Which listener a request arrived on; the admin one is private by deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Public,
    Admin,
}

/// Why a request was not authorised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing or malformed Authorization: Bearer header")]
    MissingKey,
    #[error("unknown publish key or invalid token")]
    BadKey,
    #[error("the credential does not grant channel {0:?}")]
    Forbidden(String),
    #[error("publishing on the public listener is disabled: no auth.publish_keys are configured (publish on the admin listener, or configure a key)")]
    PublicPublishDisabled,
    #[error("channel {0:?} is private: present a token (cookie or Bearer) or a ticket")]
    MissingToken(String),
    #[error("invalid token: {0}")]
    BadToken(String),
}

/// Channel patterns a credential grants.
#[derive(Debug, Clone, Default)]
pub struct Grants(Vec<WildMatch>);

impl Grants {
    pub fn from_patterns<S: AsRef<str>>(patterns: &[S]) -> Self {
        Self(
            patterns
                .iter()
                .map(|p| WildMatch::new(p.as_ref()))
                .collect(),
        )
    }

    pub fn all() -> Self {
        Self::from_patterns(&["*"])
    }

    pub fn allows(&self, channel: &str) -> bool {
        self.0.iter().any(|p| p.matches(channel))
    }

    /// The first channel not granted, if any.
    pub fn first_denied<'a>(&self, channels: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        channels.into_iter().find(|c| !self.allows(c))
    }
}

/// What a verified JWT grants.
#[derive(Debug, Clone, Default)]
pub struct TokenGrants {
    pub publish: Grants,
    pub subscribe: Grants,
}

#[derive(Debug, Default, Deserialize)]
struct Claims {
    #[serde(default)]
    herald: HeraldClaims,
}

#[derive(Debug, Default, Deserialize)]
struct HeraldClaims {
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
}

/// Verifies JWTs with one algorithm and key.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl JwtVerifier {
    /// Build from `auth.jwt.*`; `Ok(None)` when JWT is off. Errors name the key at fault.
    pub fn from_config(
        c: &crate::config::JwtConfig,
    ) -> Result<Option<Self>, (&'static str, String)> {
        let algorithm = match c.algorithm.as_str() {
            "" => return Ok(None),
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => {
                return Err((
                    "auth.jwt.algorithm",
                    format!("unsupported {other:?}; use \"HS256\", \"RS256\" or \"ES256\""),
                ))
            }
        };
        let key = match algorithm {
            Algorithm::HS256 => {
                let secret = if !c.secret_file.is_empty() {
                    read(&c.secret_file).map_err(|e| ("auth.jwt.secret_file", e))?
                } else {
                    c.secret.as_bytes().to_vec()
                };
                if secret.len() < 32 {
                    return Err((
                        "auth.jwt.secret",
                        "HS256 needs a secret of at least 32 bytes".into(),
                    ));
                }
                DecodingKey::from_secret(&secret)
            }
            _ => {
                if c.public_key_file.is_empty() {
                    return Err((
                        "auth.jwt.public_key_file",
                        "RS256/ES256 need a PEM public key file".into(),
                    ));
                }
                let pem = read(&c.public_key_file).map_err(|e| ("auth.jwt.public_key_file", e))?;
                let parsed = if algorithm == Algorithm::RS256 {
                    DecodingKey::from_rsa_pem(&pem)
                } else {
                    DecodingKey::from_ec_pem(&pem)
                };
                parsed.map_err(|e| {
                    (
                        "auth.jwt.public_key_file",
                        format!("not a usable PEM key: {e}"),
                    )
                })?
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 5;
        // A configured issuer or audience must be present, not merely right when present:
        // otherwise a token minted for another service with the same key would pass.
        let mut required = vec!["exp"];
        if !c.issuer.is_empty() {
            validation.set_issuer(&[&c.issuer]);
            required.push("iss");
        }
        if c.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&c.audience]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Ok(Some(Self { key, validation }))
    }

    pub fn verify(&self, token: &str) -> Result<TokenGrants, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::BadToken(e.to_string()))?;
        Ok(TokenGrants {
            publish: Grants::from_patterns(&data.claims.herald.publish),
            subscribe: Grants::from_patterns(&data.claims.herald.subscribe),
        })
    }
}

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(Path::new(path)).map_err(|e| format!("cannot read {path}: {e}"))
}

/// A publish key and the channels it may publish to.
struct ScopedKey {
    key: Vec<u8>,
    grants: Grants,
}

pub struct Authorizer {
    keys: Vec<ScopedKey>,
    jwt: Option<JwtVerifier>,
    private: Grants,
    /// `herald --demo`: with no credentials configured, the public listener accepts
    /// publishes too.
    demo: bool,
}

impl Authorizer {
    pub fn new(config: &AuthConfig, jwt: Option<JwtVerifier>, demo: bool) -> Self {
        let mut keys: Vec<ScopedKey> = config
            .publish_keys
            .iter()
            .map(|k| ScopedKey {
                key: k.as_bytes().to_vec(),
                grants: Grants::all(),
            })
            .collect();
        keys.extend(config.scoped_publish_keys.iter().map(|k| ScopedKey {
            key: k.key.as_bytes().to_vec(),
            grants: Grants::from_patterns(&k.channels),
        }));
        Self {
            keys,
            jwt,
            private: Grants::from_patterns(&config.private_channels),
            demo,
        }
    }

    pub fn jwt(&self) -> Option<&JwtVerifier> {
        self.jwt.as_ref()
    }

    /// May the bearer of `authorization` publish to every one of `channels`?
    ///
    /// With keys or JWT configured, every publish must present a credential, on either
    /// listener. With none, only the admin listener (or the public one in demo mode)
    /// accepts. Never "trust loopback": behind nginx every request comes from loopback.
    pub fn check_publish<'a>(
        &self,
        listener: Listener,
        authorization: Option<&[u8]>,
        channels: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Result<(), AuthError> {
        if self.keys.is_empty() && self.jwt.is_none() {
            return match listener {
                Listener::Admin => Ok(()),
                Listener::Public if self.demo => Ok(()),
                Listener::Public => Err(AuthError::PublicPublishDisabled),
            };
        }
        let presented = bearer(authorization).ok_or(AuthError::MissingKey)?;
        let grants = match self.match_key(presented) {
            Some(grants) => grants.clone(),
            None => match &self.jwt {
                Some(jwt) => {
                    std::str::from_utf8(presented)
                        .map_err(|_| AuthError::BadKey)
                        .and_then(|t| jwt.verify(t).map_err(|_| AuthError::BadKey))?
                        .publish
                }
                None => return Err(AuthError::BadKey),
            },
        };
        match grants.first_denied(channels) {
            Some(denied) => Err(AuthError::Forbidden(denied.to_string())),
            None => Ok(()),
        }
    }

    /// Compare against every key so the time taken says nothing about which matched.
    fn match_key(&self, presented: &[u8]) -> Option<&Grants> {
        let mut found = None;
        for k in &self.keys {
            if bool::from(k.key.as_slice().ct_eq(presented)) && found.is_none() {
                found = Some(&k.grants);
            }
        }
        found
    }

    /// The private channels among `channels` (those needing a subscriber credential).
    pub fn private_among<'a>(&self, channels: &'a [String]) -> Vec<&'a str> {
        channels
            .iter()
            .map(String::as_str)
            .filter(|c| self.private.allows(c))
            .collect()
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive).
pub fn bearer(authorization: Option<&[u8]>) -> Option<&[u8]> {
    let header = authorization?;
    let (scheme, token) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    Some(token.trim_ascii()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{JwtConfig, ScopedKeyConfig};

    fn config(keys: &[&str], scoped: &[(&str, &[&str])], private: &[&str]) -> AuthConfig {
        AuthConfig {
            publish_keys: keys.iter().map(|k| k.to_string()).collect(),
            scoped_publish_keys: scoped
                .iter()
                .map(|(k, c)| ScopedKeyConfig {
                    key: k.to_string(),
                    channels: c.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
            private_channels: private.iter().map(|s| s.to_string()).collect(),
            ..crate::config::Config::default().auth
        }
    }

    const KEY: &str = "kkkkkkkkkkkkkkkk";
    const ORDERS: &str = "oooooooooooooooo";

    #[test]
    fn keys_required_everywhere_when_configured() {
        let auth = Authorizer::new(&config(&[KEY], &[], &[]), None, true);
        let good = format!("Bearer {KEY}");
        let ch = ["news"];
        assert_eq!(
            auth.check_publish(Listener::Public, Some(good.as_bytes()), ch),
            Ok(())
        );
        assert_eq!(
            auth.check_publish(Listener::Admin, Some(good.as_bytes()), ch),
            Ok(())
        );
        assert_eq!(
            auth.check_publish(Listener::Admin, None, ch),
            Err(AuthError::MissingKey)
        );
        assert_eq!(
            auth.check_publish(Listener::Public, Some(b"Bearer kkkk"), ch),
            Err(AuthError::BadKey)
        );
        let basic = good.replace("Bearer", "Basic");
        assert_eq!(
            auth.check_publish(Listener::Public, Some(basic.as_bytes()), ch),
            Err(AuthError::MissingKey)
        );
    }

    #[test]
    fn scoped_keys_only_reach_their_channels() {
        let auth = Authorizer::new(&config(&[], &[(ORDERS, &["orders:*"])], &[]), None, false);
        let h = format!("Bearer {ORDERS}");
        assert_eq!(
            auth.check_publish(
                Listener::Public,
                Some(h.as_bytes()),
                ["orders:1", "orders:2"]
            ),
            Ok(())
        );
        assert_eq!(
            auth.check_publish(Listener::Public, Some(h.as_bytes()), ["orders:1", "news"]),
            Err(AuthError::Forbidden("news".into()))
        );
    }

    #[test]
    fn without_credentials_only_admin_or_demo() {
        let auth = Authorizer::new(&config(&[], &[], &[]), None, false);
        assert_eq!(auth.check_publish(Listener::Admin, None, ["a"]), Ok(()));
        assert_eq!(
            auth.check_publish(Listener::Public, None, ["a"]),
            Err(AuthError::PublicPublishDisabled)
        );
        let demo = Authorizer::new(&config(&[], &[], &[]), None, true);
        assert_eq!(demo.check_publish(Listener::Public, None, ["a"]), Ok(()));
    }

    #[test]
    fn hs256_tokens_grant_their_claims() {
        let secret = "s".repeat(32);
        let jwt = JwtVerifier::from_config(&JwtConfig {
            algorithm: "HS256".into(),
            secret: secret.clone(),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        let auth = Authorizer::new(&config(&[], &[], &["private:*"]), Some(jwt), false);
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        let claims = serde_json::json!({"exp": exp, "herald": {"publish": ["news"], "subscribe": ["private:1"]}});
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        let h = format!("Bearer {token}");
        assert_eq!(
            auth.check_publish(Listener::Public, Some(h.as_bytes()), ["news"]),
            Ok(())
        );
        assert_eq!(
            auth.check_publish(Listener::Public, Some(h.as_bytes()), ["other"]),
            Err(AuthError::Forbidden("other".into()))
        );
        let grants = auth.jwt().unwrap().verify(&token).unwrap();
        assert!(grants.subscribe.allows("private:1"));
        assert!(!grants.subscribe.allows("private:2"));
        let tampered = format!("{}x", &token[..token.len() - 1]);
        assert!(auth.jwt().unwrap().verify(&tampered).is_err());
        let channels = vec!["news".to_string(), "private:9".to_string()];
        assert_eq!(auth.private_among(&channels), vec!["private:9"]);
    }

    #[test]
    fn jwt_config_errors_name_the_key() {
        let bad = |c: JwtConfig| JwtVerifier::from_config(&c).err().unwrap().0;
        assert_eq!(
            bad(JwtConfig {
                algorithm: "none".into(),
                ..Default::default()
            }),
            "auth.jwt.algorithm"
        );
        assert_eq!(
            bad(JwtConfig {
                algorithm: "HS256".into(),
                ..Default::default()
            }),
            "auth.jwt.secret"
        );
        assert_eq!(
            bad(JwtConfig {
                algorithm: "ES256".into(),
                ..Default::default()
            }),
            "auth.jwt.public_key_file"
        );
    }
}
