//! Property checks on the proxy's parsers, shared by the cargo-fuzz targets (`fuzz_targets/`) and
//! the stable replay and bounded-mutation tests (`tests/`).
//!
//! Each check takes raw bytes, feeds the parser, and asserts what must hold for every input: no
//! panic; a value that parses prints back to exactly its input (so nothing is normalised behind
//! the cache's back); a name that parses can only name keys inside its own key space; a grammar
//! answer agrees with an independent implementation of the spec's grammar.

use dependency_proxy::range::{self, ByteRange};
use dependency_proxy::reference::{
    self, Digest, GITLAB_MARKER, MAX_NAME_LEN, MAX_TAG_LEN, Reference, RepositoryName, Target,
};
use dependency_proxy::upstream::auth::{self, Challenge};

/// Inputs are text on the wire (paths, header values); invalid UTF-8 never reaches the parsers.
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, written as alternating runs rather than a scanner, so it
/// disagrees with `reference::is_valid_component` wherever either is wrong.
fn spec_component(component: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let mut runs: Vec<(bool, &str)> = Vec::new();
    let mut start = 0;
    for (i, c) in component.char_indices() {
        if i > 0 {
            let prev = component[..i].chars().next_back().is_some_and(alnum);
            if prev != alnum(c) {
                runs.push((prev, &component[start..i]));
                start = i;
            }
        }
    }
    if !component.is_empty() {
        runs.push((component.chars().next_back().is_some_and(alnum), &component[start..]));
    }
    let Some((first, last)) = runs.first().zip(runs.last()) else { return false };
    if !first.0 || !last.0 {
        return false;
    }
    runs.iter().filter(|(is_alnum, _)| !is_alnum).all(|(_, sep)| {
        *sep == "." || *sep == "_" || *sep == "__" || (!sep.is_empty() && sep.bytes().all(|b| b == b'-'))
    })
}

/// What every accepted repository name must be: the spec's grammar, bounded, and unable to step
/// outside its own key prefix.
fn assert_name_invariants(name: &RepositoryName) {
    let s = name.as_str();
    assert!(!s.is_empty() && s.len() <= MAX_NAME_LEN, "name length {}: {s:?}", s.len());
    assert!(!s.starts_with('/') && !s.ends_with('/') && !s.contains("//"), "empty component in {s:?}");
    for component in name.components() {
        assert!(spec_component(component), "component {component:?} of {s:?} is not in the grammar");
        assert!(component != "." && component != "..", "traversal component in {s:?}");
    }
    assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)), "{s:?}");
    assert_eq!(RepositoryName::parse(s).as_ref(), Ok(name), "accepted name does not re-parse to itself");
    assert_eq!(name.to_string(), s);
}

fn assert_digest_invariants(digest: &Digest) {
    let hex = digest.hex();
    assert_eq!(hex.len(), digest.algorithm().hex_len(), "hex length of {digest}");
    assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "hex of {digest}");
    let printed = digest.to_string();
    assert_eq!(printed, format!("{}:{hex}", digest.algorithm().name()));
    assert_eq!(Digest::parse(&printed).as_ref(), Ok(digest), "digest does not round-trip");
}

/// `parse_registry_path`: what routing sees after `/v2/`.
pub fn check_registry_path(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let Ok(path) = reference::parse_registry_path(s) else { return };
    assert_name_invariants(&path.name);
    let (kind, reference) = match &path.target {
        Target::Manifest(r) => {
            if let Reference::Digest(d) = r {
                assert_digest_invariants(d);
            }
            ("manifests", r.to_string())
        }
        Target::Blob(d) => {
            assert_digest_invariants(d);
            ("blobs", d.to_string())
        }
    };
    // The parse is a split: putting the parts back together must give the input exactly.
    assert_eq!(format!("{}/{kind}/{reference}", path.name), s, "path does not round-trip");
    if let Some(split) = reference::split_gitlab_name(&path.name) {
        assert!(!split.group.is_empty());
        assert!(reference::validate_group(&split.group).is_ok(), "group {:?} is not a valid name", split.group);
        assert_name_invariants(&split.image);
        let rebuilt = format!("{}/{}/{}/{}", split.group, GITLAB_MARKER[0], GITLAB_MARKER[1], split.image);
        assert_eq!(rebuilt, path.name.as_str(), "GitLab split does not rebuild the name");
    }
}

/// `Digest::parse`.
pub fn check_digest(data: &[u8]) {
    let Some(s) = text(data) else { return };
    if let Ok(digest) = Digest::parse(s) {
        assert_digest_invariants(&digest);
        assert_eq!(digest.to_string(), s, "accepted digest is not printed as it was written");
    }
}

/// `Reference::parse`: a tag or a digest, and never both.
pub fn check_reference(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let Ok(parsed) = Reference::parse(s) else { return };
    assert_eq!(parsed.to_string(), s, "reference does not round-trip");
    assert_eq!(Reference::parse(&parsed.to_string()).as_ref(), Ok(&parsed));
    match &parsed {
        Reference::Tag(tag) => {
            let t = tag.as_str();
            assert!(!t.is_empty() && t.len() <= MAX_TAG_LEN, "tag length {}", t.len());
            assert!(!t.contains(':') && !t.contains('/'), "tag {t:?} could be read as a digest or a path");
            assert!(!t.starts_with('.') && !t.starts_with('-'), "tag {t:?} starts with a separator");
        }
        Reference::Digest(d) => assert_digest_invariants(d),
    }
}

/// `RepositoryName::parse`, against the spec's grammar implemented independently.
pub fn check_repository_name(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let parsed = RepositoryName::parse(s);
    let spec_ok = !s.is_empty() && s.len() <= MAX_NAME_LEN && s.split('/').all(spec_component);
    assert_eq!(parsed.is_ok(), spec_ok, "parser and spec grammar disagree on {s:?}: {parsed:?}");
    for component in s.split('/') {
        assert_eq!(reference::is_valid_component(component), spec_component(component), "{component:?}");
    }
    let Ok(name) = parsed else { return };
    assert_name_invariants(&name);
    match name.clone().with_official_prefix(Some("library")) {
        Ok(prefixed) if s.contains('/') => assert_eq!(prefixed, name, "multi-component name was prefixed"),
        Ok(prefixed) => assert_eq!(prefixed.as_str(), format!("library/{s}")),
        // Only the length can make the prefixed name invalid.
        Err(_) => assert!(s.len() + "library/".len() > MAX_NAME_LEN, "prefixing {s:?} failed"),
    }
}

/// `range::parse` and `ByteRange::resolve`: the first 8 bytes are the blob size (little endian,
/// small sizes more likely), the rest is the header value.
pub fn check_range(data: &[u8]) {
    let (size, header) = if data.len() >= 8 {
        let raw = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        // Keep most sizes small so the range arithmetic near the edges gets exercised.
        let size = if raw & 1 == 0 { (raw >> 1) % 4096 } else { raw >> 1 };
        (size, &data[8..])
    } else {
        (0, data)
    };
    let Some(header) = text(header) else { return };
    let Some(parsed) = range::parse(header) else { return };
    assert!(!header.contains(','), "a multi-range header {header:?} was honoured");
    if let ByteRange::FromTo(a, b) = parsed {
        assert!(a <= b, "inverted range {a}-{b} accepted");
    }
    let Some(resolved) = parsed.resolve(size) else { return };
    assert!(resolved.start < resolved.end, "empty range {resolved:?} for {header:?}");
    assert!(resolved.end <= size, "range {resolved:?} past the end of a {size}-byte blob");
    let expected = match parsed {
        ByteRange::FromTo(a, b) => a..b.saturating_add(1).min(size),
        ByteRange::From(a) => a..size,
        ByteRange::Suffix(n) => size - n.min(size)..size,
    };
    assert_eq!(resolved, expected, "{header:?} on {size} bytes");
    let content_range = range::content_range(&resolved, size);
    assert_eq!(content_range, format!("bytes {}-{}/{size}", resolved.start, resolved.end - 1));
}

fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `upstream::auth::parse_challenge`: what a `WWW-Authenticate` header from any upstream becomes.
pub fn check_challenge(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let Some(Challenge::Bearer(challenge)) = auth::parse_challenge(s) else { return };
    assert!(!challenge.realm.is_empty(), "Bearer challenge without a realm from {s:?}");
    // Rendering the parsed challenge canonically and parsing it again must give the same values.
    let mut rendered = format!("Bearer realm={}", quote(&challenge.realm));
    if let Some(service) = &challenge.service {
        rendered.push_str(&format!(",service={}", quote(service)));
    }
    if let Some(scope) = &challenge.scope {
        rendered.push_str(&format!(",scope={}", quote(scope)));
    }
    assert_eq!(
        auth::parse_challenge(&rendered),
        Some(Challenge::Bearer(challenge.clone())),
        "{rendered:?} (from {s:?}) does not re-parse to the same challenge"
    );
}

/// A check: raw input in, panic on a violated property.
pub type Check = fn(&[u8]);

/// Every check, by target name, for the stable tests.
pub const TARGETS: [(&str, Check); 6] = [
    ("registry_path", check_registry_path),
    ("digest", check_digest),
    ("reference", check_reference),
    ("repository_name", check_repository_name),
    ("range", check_range),
    ("challenge", check_challenge),
];

#[cfg(test)]
mod tests {
    use super::spec_component;

    #[test]
    fn spec_grammar_matches_the_examples() {
        for ok in ["a", "a0", "my-app", "my--app", "my_app", "my__app", "v1.2", "a.b-c_d__e"] {
            assert!(spec_component(ok), "{ok}");
        }
        for bad in ["", "A", "-a", "a-", ".a", "a.", "a..b", "a___b", "_a", "a_", "a/b", "..", ".", "a b", "ä", "a.-b"]
        {
            assert!(!spec_component(bad), "{bad}");
        }
    }
}
