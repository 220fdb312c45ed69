//! The upstream behind a Bearer token service (the shim's), the Docker challenge flow, Basic
//! credentials for the token service, token caching/expiry/refresh, and blob redirects to a CDN
//! on another host that must not get the registry's Authorization header.

use std::time::Duration;

use integration_tests::image;
use integration_tests::shim;
use integration_tests::shim::{AuthOptions, ShimOptions};
use integration_tests::*;

fn auth_env(basic: Option<(&str, &str)>, proxy_creds: Option<(&str, &str)>, ttl: Duration, redirect: bool) -> Env {
    let auth = AuthOptions { basic: basic.map(|(u, p)| (u.into(), p.into())), token_ttl: ttl, ..Default::default() };
    Env::with(ShimOptions { auth: Some(auth), redirect_blobs: redirect }, |o| match proxy_creds {
        Some((u, p)) => o.credentials(u, p),
        None => o,
    })
}

fn tokens_issued(shim: &Shim) -> Vec<shim::Record> {
    shim.records().into_iter().filter(|r| r.kind == Kind::Token && r.status == 200).collect()
}

#[test]
fn anonymous_bearer_flow_with_skopeo() {
    let env = auth_env(None, None, Duration::from_secs(300), false);
    let img = Image::simple("auth-anon", false);
    env.seed(img.clone(), "test/private", "v1");
    let out = tempfile::tempdir().unwrap();
    Skopeo::new()
        .copy_to_dir(&format!("{}:v1", env.proxy.image_ref("test/private")), &out.path().join("d"), false)
        .unwrap();
    assert_eq!(std::fs::read(out.path().join("d/manifest.json")).unwrap(), img.manifest);
    for b in std::iter::once(&img.config).chain(&img.layers) {
        assert_eq!(env.shim.blob_gets(&b.digest), 1);
    }
    let tokens = tokens_issued(&env.shim);
    assert_eq!(tokens.len(), 1, "one scope, one token (cached until expires_in): {tokens:#?}");
    let q = tokens[0].query.clone().unwrap_or_default();
    assert!(q.contains("service=test-registry"), "token request {q}");
    assert!(
        q.contains("scope=repository%3Atest%2Fprivate%3Apull") || q.contains("scope=repository:test/private:pull"),
        "token request {q}"
    );
    assert!(tokens[0].authorization.is_none(), "anonymous: no credentials sent to the token service");
    // Every content request that got through carried the Bearer token.
    for r in env.shim.content_requests() {
        assert!(r.authorization.as_deref().unwrap_or("").starts_with("Bearer "), "{r:?}");
    }
}

#[test]
fn token_per_repository_scope() {
    let env = auth_env(None, None, Duration::from_secs(300), false);
    let a = Image::simple("scope-a", false);
    let b = Image::simple("scope-b", false);
    env.seed(a.clone(), "test/a", "v1");
    env.seed(b.clone(), "test/b", "v1");
    let http = Http::new();
    for (name, img) in [("test/a", &a), ("test/b", &b)] {
        let r = http.get(&env.proxy.blob_url(name, &img.layers[0].digest));
        assert_eq!((r.status, r.digest.as_str()), (200, img.layers[0].digest.as_str()), "{}", r.text());
    }
    assert_eq!(tokens_issued(&env.shim).len(), 2);
    let r = http.get(&env.proxy.blob_url("test/a", &a.layers[1].digest));
    assert_eq!(r.status, 200);
    assert_eq!(tokens_issued(&env.shim).len(), 2, "the token of test/a is reused");
}

#[test]
fn basic_credentials_for_the_token_service() {
    let env = auth_env(Some(("alice", "s3cret")), Some(("alice", "s3cret")), Duration::from_secs(300), false);
    let img = Image::simple("auth-basic", false);
    env.seed(img.clone(), "test/private", "v1");
    let podman = Podman::new();
    let reference = format!("{}:v1", env.proxy.image_ref("test/private"));
    podman.pull(&reference).unwrap();
    assert_eq!(podman.image_digest(&reference).unwrap(), img.digest);
    let tokens = tokens_issued(&env.shim);
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].authorization.as_deref(), Some("Basic YWxpY2U6czNjcmV0"));
}

#[test]
fn wrong_credentials_give_an_oci_error_not_a_404() {
    let env = auth_env(Some(("alice", "s3cret")), Some(("alice", "wrong")), Duration::from_secs(300), false);
    let img = Image::simple("auth-wrong", false);
    env.seed(img.clone(), "test/private", "v1");
    let r = Http::new().request(
        reqwest::Method::GET,
        &env.proxy.manifest_url("test/private", "v1"),
        &[("accept", image::ACCEPT_ALL)],
    );
    assert!(matches!(r.status, 401 | 403 | 502), "status {} body {}", r.status, r.text());
    assert_eq!(r.header("content-type").as_deref().map(|c| c.starts_with("application/json")), Some(true));
    let code = r.oci_error_code();
    assert!(["UNAUTHORIZED", "DENIED", "UNKNOWN"].contains(&code.as_str()), "code {code}");
    assert_eq!(env.shim.records().iter().filter(|r| r.kind == Kind::Token && r.status == 200).count(), 0);
}

#[test]
fn expired_token_is_refreshed() {
    let env = auth_env(None, None, Duration::from_secs(2), false);
    let img = Image::simple("auth-expiry", false);
    env.seed(img.clone(), "test/private", "v1");
    let http = Http::new();
    let r = http.get(&env.proxy.blob_url("test/private", &img.layers[0].digest));
    assert_eq!(r.status, 200);
    assert_eq!(tokens_issued(&env.shim).len(), 1);
    std::thread::sleep(Duration::from_millis(2600));
    let r = http.get(&env.proxy.blob_url("test/private", &img.layers[1].digest));
    assert_eq!((r.status, r.digest.as_str()), (200, img.layers[1].digest.as_str()), "{}", r.text());
    assert_eq!(tokens_issued(&env.shim).len(), 2, "a new token after expires_in");
}

#[test]
fn revoked_token_is_retried_once_on_401() {
    let env = auth_env(None, None, Duration::from_secs(300), false);
    let img = Image::simple("auth-revoke", false);
    env.seed(img.clone(), "test/private", "v1");
    let http = Http::new();
    assert_eq!(http.get(&env.proxy.blob_url("test/private", &img.layers[0].digest)).status, 200);
    env.shim.revoke_tokens();
    env.shim.reset();
    let r = http.get(&env.proxy.blob_url("test/private", &img.layers[1].digest));
    assert_eq!((r.status, r.digest.as_str()), (200, img.layers[1].digest.as_str()), "{}", r.text());
    assert_eq!(tokens_issued(&env.shim).len(), 1, "one new token after the 401");
    let challenged = env.shim.records().iter().filter(|r| r.kind == Kind::Blob && r.status == 401).count();
    assert_eq!(challenged, 1, "the revoked token is challenged once, then the retry succeeds");
    assert_eq!(env.shim.blob_gets(&img.layers[1].digest), 1);
}

#[test]
fn blob_redirect_to_cdn_without_authorization() {
    let env = auth_env(None, None, Duration::from_secs(300), true);
    let img = Image::simple("auth-cdn", false);
    env.seed(img.clone(), "test/private", "v1");
    let out = tempfile::tempdir().unwrap();
    Skopeo::new()
        .copy_to_dir(&format!("{}:v1", env.proxy.image_ref("test/private")), &out.path().join("d"), false)
        .unwrap();
    for b in std::iter::once(&img.config).chain(&img.layers) {
        assert_eq!(std::fs::read(out.path().join("d").join(&b.digest[7..])).unwrap(), b.bytes());
    }
    let cdn = env.shim.cdn_records();
    assert_eq!(cdn.len(), 3, "config and 2 layers fetched from the CDN: {cdn:#?}");
    for r in &cdn {
        assert_eq!(r.authorization, None, "the registry's Authorization was sent to the CDN host: {r:?}");
    }
    // The redirect was followed once per blob, and from cache afterwards.
    let out2 = tempfile::tempdir().unwrap();
    Skopeo::new()
        .copy_to_dir(&format!("{}:v1", env.proxy.image_ref("test/private")), &out2.path().join("d"), false)
        .unwrap();
    assert_eq!(env.shim.cdn_records().len(), 3);
}

#[test]
fn redirect_to_cdn_anonymous_upstream() {
    let env = Env::with(ShimOptions { auth: None, redirect_blobs: true }, |o| o);
    let img = Image::simple("cdn-anon", false);
    env.seed(img.clone(), "test/cdn", "v1");
    let r = Http::new().get(&env.proxy.blob_url("test/cdn", &img.layers[1].digest));
    assert_eq!((r.status, r.digest.as_str(), r.len), (200, img.layers[1].digest.as_str(), img.layers[1].size));
    assert_eq!(r.header("content-length"), Some(img.layers[1].size.to_string()));
    assert_eq!(env.shim.cdn_records().len(), 1);
}

#[test]
fn persistent_401_is_retried_once_then_an_error() {
    let auth = AuthOptions { reject_all: true, ..Default::default() };
    let env = Env::with(ShimOptions { auth: Some(auth), redirect_blobs: false }, |o| o);
    let img = Image::simple("auth-broken", false);
    env.seed(img.clone(), "test/private", "v1");
    let r = Http::new().get(&env.proxy.blob_url("test/private", &img.layers[0].digest));
    assert!(matches!(r.status, 401 | 403 | 502), "status {}: {}", r.status, r.text());
    r.oci_error_code();
    let tokens = tokens_issued(&env.shim).len();
    assert!((1..=2).contains(&tokens), "token requests for one client request: {tokens}");
    let blob_tries = env.shim.count(Kind::Blob, "GET");
    assert!(blob_tries <= 3, "upstream blob attempts for one client request: {blob_tries}");
}
