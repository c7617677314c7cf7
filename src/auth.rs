//! Who may publish: bearer keys compared in constant time, and the policy for when no
//! key is configured.

use subtle::ConstantTimeEq;

/// Which listener a request arrived on; the admin one is private by deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Public,
    Admin,
}

/// Why a publish was not authorised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing or malformed Authorization: Bearer header")]
    MissingKey,
    #[error("unknown publish key")]
    BadKey,
    #[error("publishing on the public listener is disabled: no auth.publish_keys are configured (publish on the admin listener, or configure a key)")]
    PublicPublishDisabled,
}

pub struct PublishAuth {
    keys: Vec<Vec<u8>>,
    /// `herald --demo`: with no keys, the public listener accepts publishes too.
    demo: bool,
}

impl PublishAuth {
    pub fn new(keys: &[String], demo: bool) -> Self {
        Self {
            keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            demo,
        }
    }

    /// With keys configured, every publish must present one, on either listener.
    /// Without keys, only the admin listener (or the public one in demo mode) accepts.
    /// Never "trust loopback": behind nginx every request comes from loopback.
    pub fn check(&self, listener: Listener, authorization: Option<&[u8]>) -> Result<(), AuthError> {
        if self.keys.is_empty() {
            return match listener {
                Listener::Admin => Ok(()),
                Listener::Public if self.demo => Ok(()),
                Listener::Public => Err(AuthError::PublicPublishDisabled),
            };
        }
        let presented = authorization
            .and_then(|h| h.strip_prefix(b"Bearer "))
            .ok_or(AuthError::MissingKey)?;
        // Compare against every key so the time taken says nothing about which matched.
        let mut matched = 0u8;
        for key in &self.keys {
            matched |= key.as_slice().ct_eq(presented).unwrap_u8();
        }
        if matched == 1 {
            Ok(())
        } else {
            Err(AuthError::BadKey)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_required_everywhere_when_configured() {
        let auth = PublishAuth::new(&["k".repeat(16)], true);
        let good = format!("Bearer {}", "k".repeat(16));
        assert_eq!(auth.check(Listener::Public, Some(good.as_bytes())), Ok(()));
        assert_eq!(auth.check(Listener::Admin, Some(good.as_bytes())), Ok(()));
        assert_eq!(
            auth.check(Listener::Admin, None),
            Err(AuthError::MissingKey)
        );
        assert_eq!(
            auth.check(Listener::Public, Some(b"Bearer kkkk")),
            Err(AuthError::BadKey)
        );
        assert_eq!(
            auth.check(
                Listener::Public,
                Some(good.replace("Bearer", "Basic").as_bytes())
            ),
            Err(AuthError::MissingKey)
        );
    }

    #[test]
    fn without_keys_only_admin_or_demo() {
        let auth = PublishAuth::new(&[], false);
        assert_eq!(auth.check(Listener::Admin, None), Ok(()));
        assert_eq!(
            auth.check(Listener::Public, None),
            Err(AuthError::PublicPublishDisabled)
        );
        let demo = PublishAuth::new(&[], true);
        assert_eq!(demo.check(Listener::Public, None), Ok(()));
    }
}
