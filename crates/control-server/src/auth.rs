//! Who may call the control server: the credential it checks every request against
//! ([`Auth`]: one town's derived secret in production, the master key in local dev and tests),
//! taken out of the environment before anything else runs, and the checks made on a request's
//! head before its route is handled: its `Host` on the allow-list (421), then
//! `authorization: Bearer <secret>` with `x-gastown-town-id` (401, 400 for a bad town id; 403
//! for a town this container does not serve). The crate docs state why each exists.

use crate::http::{error, Head, Reply};
use gastown_core::control::{
    bearer, control_secret, secret_matches, AUTHORIZATION_HEADER, KEY_ENV, SECRET_ENV, TOWN_ID_ENV,
    TOWN_ID_HEADER,
};
use gastown_core::ids::TownId;

/// Shortest master key or derived secret accepted at start.
pub const MIN_SECRET_BYTES: usize = 32;
/// Hosts accepted when no `--allowed-host` is given (each with or without a port).
pub const DEFAULT_ALLOWED_HOSTS: [&str; 4] = ["container", "localhost", "127.0.0.1", "[::1]"];

/// The credential the server checks every control request against.
#[derive(Clone)]
pub enum Auth {
    /// Production: one town per container, started with that town's derived secret.
    Town { town_id: String, secret: String },
    /// Local dev and tests: one server for every town, holding the master key.
    Key(Vec<u8>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Town { town_id, .. } => write!(f, "Auth::Town({town_id}, ****)"),
            Auth::Key(_) => f.write_str("Auth::Key(****)"),
        }
    }
}

impl Auth {
    /// Reads the credential from the environment and removes every control variable from it,
    /// whatever the outcome. Call it before any thread is started.
    ///
    /// # Errors
    /// A message for the operator when no usable credential is configured.
    pub fn take_from_env() -> Result<Auth, String> {
        let take = |name: &str| {
            let value = std::env::var_os(name);
            std::env::remove_var(name);
            value.map(|v| v.into_string().map_err(|_| format!("{name} is not UTF-8")))
        };
        let key = take(KEY_ENV).transpose()?;
        let secret = take(SECRET_ENV).transpose()?;
        let town = take(TOWN_ID_ENV).transpose()?;
        Auth::from_values(key, secret, town)
    }

    /// The credential from the values of `GASTOWN_CONTROL_KEY`, `GASTOWN_CONTROL_SECRET` and
    /// `GASTOWN_TOWN_ID` (empty counts as unset).
    ///
    /// # Errors
    /// A message for the operator when they name no usable credential.
    pub fn from_values(
        key: Option<String>,
        secret: Option<String>,
        town: Option<String>,
    ) -> Result<Auth, String> {
        let set = |v: Option<String>| v.filter(|s| !s.is_empty());
        match (set(key), set(secret), set(town)) {
            (Some(_), Some(_), _) => Err(format!(
                "set either {KEY_ENV} (one server for many towns) or {SECRET_ENV} with \
                 {TOWN_ID_ENV} (one town per container), not both"
            )),
            (Some(key), None, _) if key.len() < MIN_SECRET_BYTES => Err(format!(
                "{KEY_ENV} must be at least {MIN_SECRET_BYTES} bytes"
            )),
            (Some(key), None, _) => Ok(Auth::Key(key.into_bytes())),
            (None, Some(_), None) => Err(format!("{SECRET_ENV} is set but {TOWN_ID_ENV} is not")),
            (None, Some(secret), Some(_)) if secret.len() < MIN_SECRET_BYTES => Err(format!(
                "{SECRET_ENV} must be at least {MIN_SECRET_BYTES} bytes"
            )),
            (None, Some(secret), Some(town_id)) => match TownId::parse(&town_id) {
                Ok(_) => Ok(Auth::Town { town_id, secret }),
                Err(e) => Err(format!("{TOWN_ID_ENV} {e}")),
            },
            (None, None, _) => Err(format!(
                "no credential: set {SECRET_ENV} and {TOWN_ID_ENV} (production: the secret \
                 derived for this container's town) or {KEY_ENV} (local dev and tests: the \
                 master key); the control server never runs unauthenticated"
            )),
        }
    }

    /// Checks the request's credential for `town`. `Err` is the refusal to send.
    fn check(&self, town: &str, presented: &str) -> Result<(), Reply> {
        match self {
            Auth::Town { town_id, secret } => {
                // The secret is checked first, so a caller without it learns nothing about the
                // town this container serves.
                if !secret_matches(secret, presented) {
                    return Err(error(401, "bad credentials"));
                }
                if town != town_id {
                    return Err(error(403, "this container serves another town"));
                }
                Ok(())
            }
            Auth::Key(key) => {
                if secret_matches(&control_secret(key, town), presented) {
                    Ok(())
                } else {
                    Err(error(401, "bad credentials"))
                }
            }
        }
    }
}

/// The town the request is authenticated for.
pub(crate) fn authenticate(head: &Head, auth: &Auth) -> Result<String, Reply> {
    let unauthorized = || error(401, "bad credentials");
    let presented = head
        .one(AUTHORIZATION_HEADER)?
        .and_then(bearer)
        .ok_or_else(unauthorized)?;
    let town = head.one(TOWN_ID_HEADER)?.ok_or_else(unauthorized)?;
    if TownId::parse(town).is_err() {
        return Err(error(400, &format!("bad {TOWN_ID_HEADER}")));
    }
    auth.check(town, presented)?;
    Ok(town.to_owned())
}

/// Whether `host` (a `Host` header value) names one of `allowed` (lowercase, without port).
pub(crate) fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.to_ascii_lowercase();
    let name = if host.starts_with('[') {
        // [v6] or [v6]:port
        match host.find(']') {
            Some(end) => {
                let rest = &host[end + 1..];
                if !(rest.is_empty() || is_port_suffix(rest)) {
                    return false;
                }
                &host[..=end]
            }
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port_suffix(&format!(":{port}")) => name,
            Some(_) => return false,
            None => host.as_str(),
        }
    };
    !name.is_empty() && allowed.iter().any(|a| a == name)
}

fn is_port_suffix(s: &str) -> bool {
    s.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        DEFAULT_ALLOWED_HOSTS
            .iter()
            .map(|h| (*h).to_owned())
            .collect()
    }

    #[test]
    fn host_allow_list() {
        let h = hosts();
        for ok in [
            "container",
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:8788",
            "[::1]",
            "[::1]:8080",
            "container:8080",
        ] {
            assert!(host_allowed(ok, &h), "{ok}");
        }
        for bad in [
            "",
            "attacker.example",
            "attacker.example:8080",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "localhost:",
            "localhost:abc",
            "[::1]x",
            "[::2]:80",
            "::1",
            "container:8080:1",
        ] {
            assert!(!host_allowed(bad, &h), "{bad}");
        }
    }

    #[test]
    fn credentials_from_values() {
        let s = |v: &str| Some(v.to_owned());
        let long = "k".repeat(MIN_SECRET_BYTES);
        assert!(matches!(
            Auth::from_values(s(&long), None, None),
            Ok(Auth::Key(_))
        ));
        assert!(matches!(
            Auth::from_values(None, s(&long), s("town-a")),
            Ok(Auth::Town { .. })
        ));
        assert!(Auth::from_values(None, None, None).is_err());
        assert!(Auth::from_values(s(""), s(""), None).is_err());
        assert!(Auth::from_values(s("short"), None, None).is_err());
        assert!(Auth::from_values(None, s(&long), None).is_err());
        assert!(Auth::from_values(None, s(&long), s("bad town")).is_err());
        assert!(Auth::from_values(s(&long), s(&long), s("t")).is_err());
        assert!(!format!("{:?}", Auth::Key(long.clone().into_bytes())).contains(&long));
    }

    #[test]
    fn town_auth_checks_secret_then_town() {
        let key = b"dev-gastown-control-key-change-me-0123456789";
        let auth = Auth::Town {
            town_id: "a".into(),
            secret: control_secret(key, "a"),
        };
        assert!(auth.check("a", &control_secret(key, "a")).is_ok());
        assert_eq!(
            auth.check("a", &control_secret(key, "b")).unwrap_err().0,
            401
        );
        assert_eq!(
            auth.check("b", &control_secret(key, "b")).unwrap_err().0,
            401
        );
        assert_eq!(
            auth.check("b", &control_secret(key, "a")).unwrap_err().0,
            403
        );
        let auth = Auth::Key(key.to_vec());
        assert!(auth.check("b", &control_secret(key, "b")).is_ok());
        assert_eq!(
            auth.check("b", &control_secret(key, "a")).unwrap_err().0,
            401
        );
    }
}
