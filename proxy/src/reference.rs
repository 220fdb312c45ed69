//! Repository names, tags and digests: the OCI distribution spec's grammar, pure and fuzzable.
//!
//! Every value that reaches the cache's key space or an upstream URL has passed through here, so
//! nothing a client sends can name a key outside `blobs/`, `manifests/` or `tags/`.

use std::fmt;

use crate::error::RegistryError;

/// Longest repository name accepted (the spec lets registries cap it; distribution uses 255).
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag the spec allows.
pub const MAX_TAG_LEN: usize = 128;

/// A repository name such as `library/alpine` or `a/b/c`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryName(String);

/// A tag such as `latest` or `3.20.1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag(String);

/// The hash algorithms a digest may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

/// A content digest `algorithm:hex`, normalised to lowercase hex of the algorithm's length.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// What a manifest request names: a tag that may move, or a digest that never does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

/// Why a value is not in the grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    #[error("repository name is empty")]
    EmptyName,
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    NameTooLong,
    #[error("path component {0:?} is not [a-z0-9]+ joined by '.', '_', '__' or '-'")]
    BadComponent(String),
    #[error("tag {0:?} is not [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    BadTag(String),
    #[error("digest {0:?} is not algorithm:hex")]
    BadDigest(String),
    #[error("digest algorithm {0:?} is not supported (sha256, sha512)")]
    UnsupportedAlgorithm(String),
}

/// Checks one path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
pub fn is_valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or one or more '-', followed by an alphanumeric.
        let start = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < bytes.len() && bytes[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < bytes.len() && bytes[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= bytes.len() || !alnum(bytes[i]) {
            return false;
        }
    }
    true
}

/// Checks a group name: one or more path components (GitLab subgroups use `/`).
pub fn validate_group(group: &str) -> Result<(), GrammarError> {
    RepositoryName::parse(group).map(|_| ())
}

impl RepositoryName {
    pub fn parse(name: &str) -> Result<Self, GrammarError> {
        if name.is_empty() {
            return Err(GrammarError::EmptyName);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(GrammarError::NameTooLong);
        }
        if let Some(bad) = name.split('/').find(|c| !is_valid_component(c)) {
            return Err(GrammarError::BadComponent(bad.to_owned()));
        }
        Ok(Self(name.to_owned()))
    }

    /// Builds a name from validated components.
    pub fn from_components<'a>(components: impl IntoIterator<Item = &'a str>) -> Result<Self, GrammarError> {
        Self::parse(&components.into_iter().collect::<Vec<_>>().join("/"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Applies Docker Hub's convention: a single-component name lives under `prefix/`.
    pub fn with_official_prefix(self, prefix: Option<&str>) -> Result<Self, GrammarError> {
        match prefix {
            Some(prefix) if !self.0.contains('/') => Self::parse(&format!("{prefix}/{}", self.0)),
            _ => Ok(self),
        }
    }
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Tag {
    pub fn parse(tag: &str) -> Result<Self, GrammarError> {
        let bytes = tag.as_bytes();
        let first_ok = bytes.first().is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
        let rest_ok = bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !first_ok || !rest_ok || bytes.len() > MAX_TAG_LEN {
            return Err(GrammarError::BadTag(tag.to_owned()));
        }
        Ok(Self(tag.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex encoding of this algorithm's output.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

impl Digest {
    /// Parses `algorithm:encoded`. Only registered algorithms with their exact hex length are
    /// accepted; uppercase hex is refused, as the spec says encoded sha256/sha512 is lowercase.
    pub fn parse(digest: &str) -> Result<Self, GrammarError> {
        let bad = || GrammarError::BadDigest(digest.to_owned());
        let (algorithm, hex) = digest.split_once(':').ok_or_else(bad)?;
        let algorithm_ok = !algorithm.is_empty()
            && algorithm
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'.' | b'_' | b'-'));
        if !algorithm_ok || hex.is_empty() {
            return Err(bad());
        }
        let algorithm = match algorithm {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => return Err(GrammarError::UnsupportedAlgorithm(other.to_owned())),
        };
        let hex_ok =
            hex.len() == algorithm.hex_len() && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_ok {
            return Err(bad());
        }
        Ok(Self { algorithm, hex: hex.to_owned() })
    }

    /// Builds a digest from a raw hash output.
    pub fn from_hash(algorithm: Algorithm, output: &[u8]) -> Self {
        Self { algorithm, hex: hex::encode(output) }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl Reference {
    /// A reference with a `:` can only be a digest; anything else must be a tag.
    pub fn parse(reference: &str) -> Result<Self, GrammarError> {
        if reference.contains(':') {
            Digest::parse(reference).map(Reference::Digest)
        } else {
            Tag::parse(reference).map(Reference::Tag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(tag) => tag.fmt(f),
            Reference::Digest(digest) => digest.fmt(f),
        }
    }
}

/// Which kind of object a `/v2/` path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Manifest(Reference),
    Blob(Digest),
}

/// A `/v2/<name>/{manifests,blobs}/<ref>` path split into its parts, before routing by group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryPath {
    pub name: RepositoryName,
    pub target: Target,
}

/// Splits the part of a path after `/v2/`. The last two segments are the kind and reference, so a
/// repository may itself contain a component named `blobs` or `manifests`.
pub fn parse_registry_path(rest: &str) -> Result<RegistryPath, RegistryError> {
    let segments: Vec<&str> = rest.split('/').collect();
    let unknown = || RegistryError::NotFound(format!("/v2/{rest} is not a registry endpoint"));
    if segments.len() < 3 {
        return Err(unknown());
    }
    let (name_segments, tail) = segments.split_at(segments.len() - 2);
    let name = RepositoryName::from_components(name_segments.iter().copied())
        .map_err(|e| RegistryError::NameInvalid(e.to_string()))?;
    let target = match tail[0] {
        "manifests" => Target::Manifest(Reference::parse(tail[1]).map_err(|e| match e {
            GrammarError::BadTag(_) => RegistryError::ManifestInvalid(e.to_string()),
            other => RegistryError::DigestInvalid(other.to_string()),
        })?),
        "blobs" => Target::Blob(Digest::parse(tail[1]).map_err(|e| RegistryError::DigestInvalid(e.to_string()))?),
        _ => return Err(unknown()),
    };
    Ok(RegistryPath { name, target })
}

/// The GitLab layout's marker between the group and the image: `<group>/dependency_proxy/containers/<image>`.
pub const GITLAB_MARKER: [&str; 2] = ["dependency_proxy", "containers"];

/// A name in GitLab's layout split into its group and upstream image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupImage {
    pub group: String,
    pub image: RepositoryName,
}

/// Splits `<group>/dependency_proxy/containers/<image>` at the first marker. Returns `None` when
/// the name is not in that layout (the caller decides whether mirror mode applies).
pub fn split_gitlab_name(name: &RepositoryName) -> Option<GroupImage> {
    let components: Vec<&str> = name.components().collect();
    let at = components.windows(2).position(|w| w == GITLAB_MARKER)?;
    if at == 0 || at + 2 >= components.len() {
        return None;
    }
    let group = components[..at].join("/");
    let image = RepositoryName::from_components(components[at + 2..].iter().copied()).ok()?;
    Some(GroupImage { group, image })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256_EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn components_follow_the_spec_grammar() {
        for ok in ["a", "alpine", "a0", "my-app", "my--app", "my_app", "my__app", "v1.2", "a.b-c_d__e"] {
            assert!(is_valid_component(ok), "{ok} should be valid");
        }
        for bad in ["", "A", "-a", "a-", ".a", "a.", "a..b", "a___b", "_a", "a_", "a/b", "..", ".", "a b", "ä"] {
            assert!(!is_valid_component(bad), "{bad} should be invalid");
        }
    }

    #[test]
    fn names_reject_traversal_and_length() {
        assert!(RepositoryName::parse("library/alpine").is_ok());
        assert!(RepositoryName::parse("a/b/c").is_ok());
        assert_eq!(RepositoryName::parse(""), Err(GrammarError::EmptyName));
        assert!(matches!(RepositoryName::parse("a/../b"), Err(GrammarError::BadComponent(c)) if c == ".."));
        assert!(RepositoryName::parse("a//b").is_err());
        assert!(RepositoryName::parse("/a").is_err());
        assert_eq!(RepositoryName::parse(&"a".repeat(256)), Err(GrammarError::NameTooLong));
        assert!(RepositoryName::parse(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn tags_follow_the_spec_grammar() {
        for ok in ["latest", "3.20", "_x", "v1.0.0-rc.1", "A_B", &"a".repeat(128)] {
            assert!(Tag::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "a b", &"a".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_are_strict() {
        let d = Digest::parse(SHA256_EMPTY).unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string(), SHA256_EMPTY);
        assert!(Digest::parse(&format!("sha512:{}", "a".repeat(128))).is_ok());
        assert!(Digest::parse(&SHA256_EMPTY.to_uppercase()).is_err());
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(Digest::parse(&format!("sha256:{}", "g".repeat(64))).is_err());
        assert!(Digest::parse(&format!("sha512:{}", "a".repeat(64))).is_err());
        assert_eq!(
            Digest::parse("md5:d41d8cd98f00b204e9800998ecf8427e"),
            Err(GrammarError::UnsupportedAlgorithm("md5".into()))
        );
        assert!(Digest::parse("sha256").is_err());
        assert!(Digest::parse(":abc").is_err());
        assert!(Digest::parse("SHA256:abc").is_err());
    }

    #[test]
    fn references_are_tags_or_digests() {
        assert_eq!(Reference::parse("latest").unwrap(), Reference::Tag(Tag::parse("latest").unwrap()));
        assert!(matches!(Reference::parse(SHA256_EMPTY).unwrap(), Reference::Digest(_)));
        assert!(Reference::parse("sha256:nothex").is_err());
    }

    #[test]
    fn registry_paths_split_at_the_last_two_segments() {
        let p = parse_registry_path("acme/dependency_proxy/containers/alpine/manifests/latest").unwrap();
        assert_eq!(p.name.as_str(), "acme/dependency_proxy/containers/alpine");
        assert_eq!(p.target, Target::Manifest(Reference::Tag(Tag::parse("latest").unwrap())));

        let p = parse_registry_path(&format!("a/blobs/manifests/blobs/{SHA256_EMPTY}")).unwrap();
        assert_eq!(p.name.as_str(), "a/blobs/manifests");
        assert!(matches!(p.target, Target::Blob(_)));

        assert!(matches!(parse_registry_path("alpine/tags/list"), Err(RegistryError::NotFound(_))));
        assert!(matches!(parse_registry_path("manifests/latest"), Err(RegistryError::NotFound(_))));
        assert!(matches!(parse_registry_path("Bad/manifests/latest"), Err(RegistryError::NameInvalid(_))));
        assert!(matches!(parse_registry_path("a/../b/manifests/latest"), Err(RegistryError::NameInvalid(_))));
        assert!(matches!(parse_registry_path("a/manifests/-bad"), Err(RegistryError::ManifestInvalid(_))));
        assert!(matches!(parse_registry_path("a/manifests/sha256:zz"), Err(RegistryError::DigestInvalid(_))));
        assert!(matches!(parse_registry_path("a/blobs/latest"), Err(RegistryError::DigestInvalid(_))));
    }

    #[test]
    fn gitlab_names_split_into_group_and_image() {
        let name = |s: &str| RepositoryName::parse(s).unwrap();
        let g = split_gitlab_name(&name("acme/dependency_proxy/containers/alpine")).unwrap();
        assert_eq!((g.group.as_str(), g.image.as_str()), ("acme", "alpine"));
        let g = split_gitlab_name(&name("acme/team/dependency_proxy/containers/a/b/c")).unwrap();
        assert_eq!((g.group.as_str(), g.image.as_str()), ("acme/team", "a/b/c"));
        assert_eq!(split_gitlab_name(&name("acme/dependency_proxy/containers")), None);
        assert_eq!(split_gitlab_name(&name("dependency_proxy/containers/alpine")), None);
        assert_eq!(split_gitlab_name(&name("library/alpine")), None);
    }

    #[test]
    fn official_prefix_applies_to_single_components_only() {
        let n = RepositoryName::parse("alpine").unwrap();
        assert_eq!(n.clone().with_official_prefix(Some("library")).unwrap().as_str(), "library/alpine");
        assert_eq!(n.with_official_prefix(None).unwrap().as_str(), "alpine");
        let n = RepositoryName::parse("bitnami/redis").unwrap();
        assert_eq!(n.with_official_prefix(Some("library")).unwrap().as_str(), "bitnami/redis");
    }
}
