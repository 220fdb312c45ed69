//! Soak: 200 pulls of a mixed set of images (shared layers, OCI and Docker types, an index) from
//! 16 concurrent clients while the shim injects seeded random faults; zero wrong bytes in any
//! complete body, zero corrupt cache entries, and every image pulls correctly once faults stop.
//! `SOAK_SEED=<n>` replays a run's fault draws (up to the order of concurrent requests).

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use integration_tests::image::ACCEPT_ALL;
use integration_tests::*;

const PULLS: usize = 200;
const CLIENTS: usize = 16;
const IMAGES: u64 = 16;
/// New pulls stop being started after this; the test fails if the 200 did not fit.
const DEADLINE: Duration = Duration::from_secs(60);

/// What the clients saw.
#[derive(Default)]
struct Tally {
    /// Complete 200 bodies whose bytes were not the ones asked for.
    wrong: Vec<String>,
    /// Error answers whose body is not an OCI error document.
    unclean: Vec<String>,
    complete_ok: usize,
    cut: usize,
    errors: usize,
    pulls_ok: usize,
    pulls_failed: usize,
}

/// One request's outcome, checked against the bytes it must carry (`expect` = digest).
fn judge(r: &Resp, expect: &str, what: &str, tally: &Mutex<Tally>) -> bool {
    let mut t = tally.lock().unwrap();
    if r.status == 200 && r.complete() {
        if r.digest == expect {
            t.complete_ok += 1;
            return true;
        }
        t.wrong.push(format!("{what}: complete 200 body hashing to {} ({} bytes)", r.digest, r.len));
    } else if r.status == 200 || r.status == 206 {
        // Cut: the client sees a truncated body and throws it away.
        t.cut += 1;
    } else {
        t.errors += 1;
        let clean = serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned))
            .is_some();
        if r.status != 0 && !clean {
            t.unclean.push(format!("{what}: status {} with body {:?}", r.status, r.text()));
        }
    }
    false
}

/// Pulls `artifact` as a client does: the tag, each platform's manifest by digest for an index,
/// then every config and layer. Every part is requested even after a failure, to keep the load.
fn pull(http: &Http, proxy: &Proxy, name: &str, artifact: &Artifact, tally: &Mutex<Tally>) -> bool {
    let get_manifest = |reference: &str| {
        http.request(reqwest::Method::GET, &proxy.manifest_url(name, reference), &[("accept", ACCEPT_ALL)])
    };
    let mut ok = judge(&get_manifest("v1"), artifact.digest(), &format!("{name}:v1"), tally);
    if let Artifact::Index(index) = artifact {
        for img in &index.images {
            ok &= judge(&get_manifest(&img.digest), &img.digest, &format!("{name}@{}", img.digest), tally);
        }
    }
    for blob in artifact.blobs() {
        let r = http.get(&proxy.blob_url(name, &blob.digest));
        ok &= judge(&r, &blob.digest, &format!("{name} blob {}", blob.digest), tally);
    }
    ok
}

/// Every fault kind the shim has, except a plain trickle (it only slows the run down).
fn fault_menu() -> Vec<Fault> {
    vec![
        Fault::CutAfterPercent(10),
        Fault::CutAfterPercent(50),
        Fault::CutAfterPercent(99),
        Fault::FlipBytes,
        Fault::GzipUnasked,
        Fault::Unavailable,
        Fault::Status(500),
        Fault::TooManyRequests { retry_after_secs: 1 },
        Fault::Reset,
        Fault::Delay(Duration::from_millis(300)),
        Fault::StripHeader("docker-content-digest"),
        Fault::Slow { bytes_per_sec: 2 << 20, then: Box::new(Fault::CutAfterPercent(70)) },
    ]
}

#[test]
fn soak_with_random_faults_delivers_no_wrong_bytes_and_caches_nothing_corrupt() {
    let started = Instant::now();
    let seed: u64 = std::env::var("SOAK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("soak seed: {seed} (rerun with SOAK_SEED={seed})");
    let env = Env::new();

    // Sixteen images sharing one base layer (half OCI, half Docker types), plus a two-platform
    // index: about 55 distinct blobs, so cold fetches (where body faults bite) go on for a while.
    let base_oci = Blob::random_layer(1, 256 * 1024, false);
    let base_docker = Blob::random_layer(1, 256 * 1024, true);
    let mut set: Vec<(String, Artifact)> = (0..IMAGES)
        .map(|i| {
            let docker = i % 2 == 1;
            let base = if docker { base_docker.clone() } else { base_oci.clone() };
            let own = Blob::random_layer(100 + i, (64 + 32 * i as usize) * 1024, docker);
            let label = format!("soak-{i}");
            let small = Blob::layer(&[("id", label.as_bytes())], docker);
            (format!("soak/app{i}"), Image::new(Platform::amd64(), vec![base, own, small], docker, &label).into())
        })
        .collect();
    set.push(("soak/multi".into(), Index::two_platforms("soak-index", false).into()));
    for (name, artifact) in &set {
        env.seed(artifact.clone(), name, "v1");
    }
    let seeded_after = started.elapsed();

    env.shim.set_random_faults(Some(RandomFaults { seed, percent: 35, faults: fault_menu() }));
    let tally = Mutex::new(Tally::default());
    let next = AtomicUsize::new(0);
    let order: Vec<usize> = {
        // The image of each pull, drawn from the seed too.
        let mut rng = PseudoRandom::new(seed ^ 0x5eed);
        (0..PULLS)
            .map(|_| {
                let mut b = [0u8; 8];
                rng.fill(&mut b);
                (u64::from_le_bytes(b) % set.len() as u64) as usize
            })
            .collect()
    };
    let loop_start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            s.spawn(|| {
                let http = Http::new();
                while loop_start.elapsed() < DEADLINE {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= PULLS {
                        break;
                    }
                    let (name, artifact) = &set[order[i]];
                    let ok = pull(&http, &env.proxy, name, artifact, &tally);
                    let mut t = tally.lock().unwrap();
                    if ok { t.pulls_ok += 1 } else { t.pulls_failed += 1 }
                }
            });
        }
    });
    let soak_time = loop_start.elapsed();
    env.shim.set_random_faults(None);
    let injected = env.shim.random_faults_injected();
    let t = tally.into_inner().unwrap();
    eprintln!(
        "soak: seeding {seeded_after:?}, {} pulls in {soak_time:?}: {} ok, {} failed; responses: {} complete ok, {} cut, \
         {} errors; {} faults injected into {} upstream requests",
        t.pulls_ok + t.pulls_failed,
        t.pulls_ok,
        t.pulls_failed,
        t.complete_ok,
        t.cut,
        t.errors,
        injected.len(),
        env.shim.content_requests().len(),
    );
    assert_eq!(t.pulls_ok + t.pulls_failed, PULLS, "pulls finished before the {DEADLINE:?} deadline");
    assert_eq!(t.wrong, Vec::<String>::new(), "wrong bytes delivered as complete bodies (seed {seed})");
    assert_eq!(t.unclean, Vec::<String>::new(), "error answers that are not OCI JSON (seed {seed})");
    assert!(!injected.is_empty(), "the soak injected no fault");

    // Faults stopped: every image pulls correctly, with the Http client and with skopeo.
    let http = Http::new();
    let strict = Mutex::new(Tally::default());
    for (name, artifact) in &set {
        assert!(pull(&http, &env.proxy, name, artifact, &strict), "{name} after the faults stopped");
    }
    let strict = strict.into_inner().unwrap();
    assert_eq!((strict.cut, strict.errors, strict.wrong.len()), (0, 0, 0));
    let skopeo = Skopeo::new();
    let out = tempfile::tempdir().unwrap();
    for (i, (name, artifact)) in set.iter().enumerate().filter(|(i, _)| *i == 0 || *i == 1 || *i == IMAGES as usize) {
        let dest = out.path().join(i.to_string());
        skopeo.copy_to_dir(&format!("{}:v1", env.proxy.image_ref(name)), &dest, true).unwrap();
        assert_eq!(std::fs::read(dest.join("manifest.json")).unwrap(), artifact.bytes(), "skopeo pull of {name}");
    }

    env.proxy.wait_idle();
    // The cache holds exactly every blob and manifest of the set, each verified, and no file with
    // bytes a fault produced.
    let check = env.proxy.check_cache();
    assert_eq!(check.problems, Vec::<String>::new(), "corrupt or partial cache entries (seed {seed})");
    let blobs: BTreeSet<String> =
        set.iter().flat_map(|(_, a)| a.blobs().into_iter().map(|b| b.digest.clone())).collect();
    assert_eq!(check.blobs, blobs.into_iter().collect::<Vec<_>>());
    let manifests: BTreeSet<String> = set
        .iter()
        .flat_map(|(_, a)| {
            let mut d: Vec<String> = a.images().iter().map(|i| i.digest.clone()).collect();
            d.push(a.digest().to_owned());
            d
        })
        .collect();
    assert_eq!(check.manifests, manifests.into_iter().collect::<Vec<_>>());
    assert_eq!(check.tags, set.len());
    let bad = env.shim.bad_body_digests();
    for (path, digest) in env.proxy.cache_files() {
        assert!(!bad.contains(&digest), "{} holds bytes a fault produced", path.display());
    }
    let r = Http::new().get(&format!("{}/healthz", env.proxy.url()));
    assert_eq!(r.status, 200);
    eprintln!("soak: total {:?}", started.elapsed());
}
