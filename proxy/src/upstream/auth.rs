//! Registry authentication: `WWW-Authenticate` challenges parsed, Bearer tokens fetched from the
//! realm the challenge names, and cached per realm/service/scope until they expire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// How long a token lives when the token service does not say (the spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are dropped this long before they expire, so none expires on its way upstream.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer(BearerChallenge),
    Basic,
}

/// Where to get a token and what to ask for: everything comes from the upstream's challenge.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BearerChallenge {
    pub realm: String,
    pub service: Option<String>,
    pub scope: Option<String>,
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`. Parameter values may
/// be quoted (with `\` escapes, and commas inside, as scopes have) or bare tokens.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, params) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(params)?;
    let realm = params.get("realm")?.clone();
    if realm.is_empty() {
        return None;
    }
    Some(Challenge::Bearer(BearerChallenge {
        realm,
        service: params.get("service").cloned(),
        scope: params.get("scope").cloned(),
    }))
}

fn parse_params(input: &str) -> Option<HashMap<String, String>> {
    let mut params = HashMap::new();
    let mut chars = input.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(params);
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return None;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| *c != ',' && !c.is_whitespace())));
        }
        params.insert(key.to_ascii_lowercase(), value);
    }
}

/// The token service's answer. Docker Hub sends both fields; the spec allows either.
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token and how long it may be used.
    pub fn into_token(self) -> Option<(String, Duration)> {
        let token = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        let lifetime = self.expires_in.map(Duration::from_secs).unwrap_or(DEFAULT_TOKEN_LIFETIME);
        Some((token, lifetime))
    }
}

/// The pull scope a registry asks for when a repository is read.
pub fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

#[derive(Debug)]
struct CachedToken {
    token: String,
    usable_until: Instant,
}

/// Tokens by challenge, and the last challenge seen, so later requests can send a token up front
/// instead of collecting a 401 first.
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<BearerChallenge, CachedToken>>,
    last_challenge: Mutex<Option<BearerChallenge>>,
}

impl TokenCache {
    /// A token still usable for this challenge.
    pub fn get(&self, challenge: &BearerChallenge, now: Instant) -> Option<String> {
        let tokens = self.tokens.lock().expect("token cache lock");
        tokens.get(challenge).filter(|t| t.usable_until > now).map(|t| t.token.clone())
    }

    pub fn insert(&self, challenge: BearerChallenge, token: String, lifetime: Duration, now: Instant) {
        let margin = EXPIRY_MARGIN.min(lifetime / 2);
        let usable_until = now + lifetime - margin;
        let mut tokens = self.tokens.lock().expect("token cache lock");
        tokens.retain(|_, t| t.usable_until > now);
        tokens.insert(challenge.clone(), CachedToken { token, usable_until });
        *self.last_challenge.lock().expect("challenge lock") = Some(challenge);
    }

    /// Forgets a token the upstream refused.
    pub fn invalidate(&self, challenge: &BearerChallenge) {
        self.tokens.lock().expect("token cache lock").remove(challenge);
    }

    /// The challenge a request for `repository` is expected to receive, guessed from the last
    /// challenge with the scope swapped for this repository's pull scope.
    pub fn expected_challenge(&self, repository: &str) -> Option<BearerChallenge> {
        let last = self.last_challenge.lock().expect("challenge lock").clone()?;
        Some(BearerChallenge { scope: Some(pull_scope(repository)), ..last })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_challenge_parses() {
        let header = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#;
        assert_eq!(
            parse_challenge(header),
            Some(Challenge::Bearer(BearerChallenge {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            }))
        );
    }

    #[test]
    fn quoted_commas_escapes_and_bare_tokens() {
        let header = r#"bearer realm=http://127.0.0.1:1/token , scope="repository:a:pull,push", service="x\"y""#;
        let Some(Challenge::Bearer(c)) = parse_challenge(header) else { panic!("not bearer") };
        assert_eq!(c.realm, "http://127.0.0.1:1/token");
        assert_eq!(c.scope.as_deref(), Some("repository:a:pull,push"));
        assert_eq!(c.service.as_deref(), Some("x\"y"));
    }

    #[test]
    fn malformed_challenges_are_refused() {
        assert_eq!(parse_challenge("Basic realm=\"registry\""), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
        assert_eq!(parse_challenge("Bearer realm=\"unterminated"), None);
        assert_eq!(parse_challenge("Bearer realm"), None);
    }

    #[test]
    fn token_response_prefers_token_and_defaults_lifetime() {
        let r: TokenResponse = serde_json::from_str(r#"{"access_token":"b"}"#).unwrap();
        assert_eq!(r.into_token(), Some(("b".into(), Duration::from_secs(60))));
        let r: TokenResponse = serde_json::from_str(r#"{"token":"a","access_token":"b","expires_in":300}"#).unwrap();
        assert_eq!(r.into_token(), Some(("a".into(), Duration::from_secs(300))));
        let r: TokenResponse = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert_eq!(r.into_token(), None);
    }

    #[test]
    fn tokens_expire_before_their_lifetime_ends() {
        let cache = TokenCache::default();
        let challenge = BearerChallenge { realm: "r".into(), service: None, scope: Some(pull_scope("a")) };
        let now = Instant::now();
        cache.insert(challenge.clone(), "t".into(), Duration::from_secs(60), now);
        assert_eq!(cache.get(&challenge, now + Duration::from_secs(49)), Some("t".into()));
        assert_eq!(cache.get(&challenge, now + Duration::from_secs(51)), None);
        assert_eq!(cache.expected_challenge("b").unwrap().scope.as_deref(), Some("repository:b:pull"));
        cache.invalidate(&challenge);
        assert_eq!(cache.get(&challenge, now), None);
    }
}
