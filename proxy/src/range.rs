//! HTTP `Range` requests on blobs: parsing the header and resolving it against a blob's size.
//!
//! Only a single `bytes=` range is honoured. As RFC 9110 allows, a header we do not honour
//! (malformed, several ranges, another unit) is ignored and the whole blob is sent.

use std::ops::Range;

/// A byte range as the client wrote it, before the blob's size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b`, inclusive.
    FromTo(u64, u64),
    /// `bytes=a-`.
    From(u64),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

/// Parses a `Range` header value; `None` means "ignore it and send everything".
pub fn parse(header: &str) -> Option<ByteRange> {
    let spec = header.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => Some(ByteRange::Suffix(number(last)?)),
        (false, true) => Some(ByteRange::From(number(first)?)),
        (false, false) => {
            let (a, b) = (number(first)?, number(last)?);
            (a <= b).then_some(ByteRange::FromTo(a, b))
        }
        (true, true) => None,
    }
}

impl ByteRange {
    /// The half-open range of a blob of `size` bytes this covers, or `None` when it is not
    /// satisfiable (the caller answers 416).
    pub fn resolve(self, size: u64) -> Option<Range<u64>> {
        match self {
            ByteRange::FromTo(a, b) if a < size => Some(a..b.min(size - 1) + 1),
            ByteRange::From(a) if a < size => Some(a..size),
            ByteRange::Suffix(n) if n > 0 && size > 0 => Some(size.saturating_sub(n)..size),
            _ => None,
        }
    }
}

/// The `Content-Range` value for a 206 answer.
pub fn content_range(range: &Range<u64>, size: u64) -> String {
    format!("bytes {}-{}/{size}", range.start, range.end - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(parse("bytes=0-99"), Some(ByteRange::FromTo(0, 99)));
        assert_eq!(parse("bytes=100-"), Some(ByteRange::From(100)));
        assert_eq!(parse("bytes=-5"), Some(ByteRange::Suffix(5)));
        assert_eq!(parse(" bytes= 1 - 2 "), Some(ByteRange::FromTo(1, 2)));
    }

    #[test]
    fn ignores_what_it_does_not_honour() {
        for header in ["bytes=0-1,5-6", "items=0-1", "bytes=-", "bytes=5-1", "bytes=a-b", "bytes=+1-2", "0-1"] {
            assert_eq!(parse(header), None, "{header}");
        }
    }

    #[test]
    fn resolves_against_size() {
        assert_eq!(ByteRange::FromTo(0, 99).resolve(50), Some(0..50));
        assert_eq!(ByteRange::FromTo(10, 19).resolve(50), Some(10..20));
        assert_eq!(ByteRange::From(49).resolve(50), Some(49..50));
        assert_eq!(ByteRange::From(50).resolve(50), None);
        assert_eq!(ByteRange::Suffix(10).resolve(50), Some(40..50));
        assert_eq!(ByteRange::Suffix(100).resolve(50), Some(0..50));
        assert_eq!(ByteRange::Suffix(0).resolve(50), None);
        assert_eq!(ByteRange::From(0).resolve(0), None);
        assert_eq!(content_range(&(40..50), 50), "bytes 40-49/50");
    }
}
