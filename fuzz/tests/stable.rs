//! The fuzz checks on stable Rust, no libFuzzer: the committed corpus replayed, then a bounded,
//! seeded random mutation run from it. Not coverage-guided (that is `cargo fuzz`, on nightly):
//! it keeps the checks compiling and passing in every build, and finds the shallow bugs.
//!
//! `FUZZ_ITERATIONS` (per target, default 2000) and `FUZZ_SEED` (default fixed) bound the run;
//! a failure prints the seed and the input.

use std::fs;
use std::panic;
use std::path::Path;

use dependency_proxy_fuzz::TARGETS;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut inputs: Vec<Vec<u8>> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| fs::read(entry.expect("corpus entry").path()).expect("read corpus file"))
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn corpus_replays_clean() {
    for (target, check) in TARGETS {
        let inputs = corpus(target);
        assert!(!inputs.is_empty(), "corpus for {target} is empty");
        for input in inputs {
            check(&input);
        }
    }
}

/// xorshift64: the mutation run must be reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Fragments the grammars care about, spliced in so mutations reach the interesting branches.
const TOKENS: &[&[u8]] = &[
    b"/",
    b":",
    b"sha256:",
    b"sha512:",
    b"-",
    b"--",
    b"_",
    b"__",
    b".",
    b"..",
    b",",
    b"=",
    b"\"",
    b"\\",
    b" ",
    b"bytes=",
    b"Bearer ",
    b"realm=",
    b"scope=",
    b"manifests/",
    b"blobs/",
    b"dependency_proxy/containers/",
    b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    b"0",
    b"18446744073709551615",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 if !input.is_empty() => {
                let i = rng.below(input.len());
                input.remove(i);
            }
            2 => {
                let i = rng.below(input.len() + 1);
                input.insert(i, rng.next() as u8);
            }
            3 => {
                let i = rng.below(input.len() + 1);
                let token = TOKENS[rng.below(TOKENS.len())];
                input.splice(i..i, token.iter().copied());
            }
            4 if input.len() > 1 => {
                let (a, b) = (rng.below(input.len()), rng.below(input.len()));
                let (a, b) = (a.min(b), a.max(b));
                input.drain(a..b);
            }
            _ => {
                let i = rng.below(input.len() + 1);
                const BYTES: &[u8] = b"az09AZ:/-_.@ \"\\,=\x00\xff";
                input.insert(i, BYTES[rng.below(BYTES.len())]);
            }
        }
    }
}

#[test]
fn bounded_mutation_run() {
    let iterations: usize = std::env::var("FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let seed: u64 = std::env::var("FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5EED_F00D);
    for (target, check) in TARGETS {
        let seeds = corpus(target);
        let mut rng = Rng(seed ^ target.len() as u64 ^ 0x9E37_79B9_7F4A_7C15);
        for i in 0..iterations {
            let mut input = seeds[rng.below(seeds.len())].clone();
            mutate(&mut rng, &mut input);
            if let Err(panic) = panic::catch_unwind(|| check(&input)) {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                panic!(
                    "{target}: iteration {i} (FUZZ_SEED={seed}) failed on {:?}: {message}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
        println!("{target}: {iterations} mutated inputs, no failure (FUZZ_SEED={seed})");
    }
}
