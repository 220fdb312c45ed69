//! The object-store layout: every key the cache reads or writes is built here, from validated
//! names only, so no request can address a key outside these three trees.
//!
//! ```text
//! blobs/<algorithm>/<first two hex>/<hex>            blob bytes, content-addressed
//! manifests/<algorithm>/<first two hex>/<hex>        media type line + manifest bytes
//! tags/<upstream>/<repository…>/_tags/<tag>          JSON: the digest the tag pointed at
//! ```
//! `_tags` cannot be a repository component (components start with `[a-z0-9]`), so a repository
//! and a tag can never collide.

use object_store::path::Path;

use crate::reference::{Digest, RepositoryName, Tag};

pub const BLOBS: &str = "blobs";
pub const MANIFESTS: &str = "manifests";
pub const TAGS: &str = "tags";
const TAG_SEPARATOR: &str = "_tags";

fn content_addressed(tree: &str, digest: &Digest) -> Path {
    let hex = digest.hex();
    Path::from_iter([tree, digest.algorithm().name(), &hex[..2], hex])
}

pub fn blob(digest: &Digest) -> Path {
    content_addressed(BLOBS, digest)
}

pub fn manifest(digest: &Digest) -> Path {
    content_addressed(MANIFESTS, digest)
}

/// Tags are kept per upstream, so pointing the proxy at another registry never serves the old
/// registry's idea of `latest`.
pub fn tag(upstream: &str, repository: &RepositoryName, tag: &Tag) -> Path {
    let upstream = upstream_segment(upstream);
    let parts = std::iter::once(TAGS)
        .chain(std::iter::once(upstream.as_str()))
        .chain(repository.components())
        .chain([TAG_SEPARATOR, tag.as_str()]);
    Path::from_iter(parts)
}

/// An upstream's authority (`host:port`) as one path segment.
fn upstream_segment(authority: &str) -> String {
    authority.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn layout_is_stable() {
        let digest = Digest::parse(D).unwrap();
        assert_eq!(
            blob(&digest).as_ref(),
            "blobs/sha256/e3/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(manifest(&digest).as_ref().starts_with("manifests/sha256/e3/"));
        let repo = RepositoryName::parse("a/b/c").unwrap();
        let t = Tag::parse("v1.0").unwrap();
        assert_eq!(tag("127.0.0.1:5001", &repo, &t).as_ref(), "tags/127.0.0.1_5001/a/b/c/_tags/v1.0");
        assert_eq!(tag("[::1]:5001", &repo, &t).as_ref(), "tags/___1__5001/a/b/c/_tags/v1.0");
    }
}
