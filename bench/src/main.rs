//! Benchmark harness for issue 4: this proxy beside CNCF distribution in proxy mode and nginx
//! `proxy_cache`, in one run on loopback, against one local upstream `docker-registry`.
//!
//! Run it through `scripts/bench`, which installs the Debian programs and builds the release
//! binaries first. It prints one markdown table and writes it, with a PNG plot, to
//! `bench/results/<date>.md` and `bench/results/latest.md`.

mod error;
mod load;
mod procs;
mod procstat;
mod report;
mod seed;
mod systems;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::error::{BenchError, Result};
use crate::report::{Run, SystemResult};
use crate::systems::{Kind, Programs, System, Upstream};

const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * MIB;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks dependency-proxy against distribution (proxy mode) and nginx proxy_cache")]
struct Args {
    /// The dependency-proxy binary to measure (a release build).
    #[arg(long, env = "DEPENDENCY_PROXY_BIN")]
    proxy_bin: PathBuf,
    /// Where the markdown table and the plot go.
    #[arg(long, default_value = "bench/results")]
    results_dir: PathBuf,
    /// Size of the layer, in MiB.
    #[arg(long, default_value_t = 256)]
    layer_mib: u64,
    /// Clients in the parallel cache-hit run.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Pulls per client in the parallel run.
    #[arg(long, default_value_t = 2)]
    parallel_rounds: usize,
    /// Sequential pulls in the single-client run.
    #[arg(long, default_value_t = 4)]
    single_rounds: usize,
    /// Cold pulls per system (each after emptying the cache); the median is reported.
    #[arg(long, default_value_t = 3)]
    cold_reps: usize,
    /// Concurrent cold pulls of one blob.
    #[arg(long, default_value_t = 50)]
    stampede: usize,
    /// Connections for the manifest request rates.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 10)]
    wrk_seconds: u32,
    /// Measure only these systems (comma-separated: dependency-proxy, distribution, nginx).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Keep the temporary folder (configs, logs, caches) and print its path.
    #[arg(long)]
    keep: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let programs = Programs {
        proxy: procs::require_program(&args.proxy_bin.to_string_lossy())?,
        registry: procs::require_program("docker-registry")?,
        nginx: procs::require_program("nginx")?,
    };
    procs::require_program("wrk")?;
    procs::require_program("gnuplot")?;
    // One client for the whole run: no system proxy from the environment, generous timeouts for
    // slow cold pulls, no connection limit (the parallel and stampede runs open many).
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(BenchError::http("build HTTP client"))?;
    let load_start = load_average();
    let tmp = tempfile::Builder::new().prefix("dp-bench.").tempdir().map_err(BenchError::io("create temp dir"))?;
    let work = tmp.path().to_owned();
    println!("bench: working in {}", work.display());

    let upstream = Upstream::start(&client, &programs.registry, &work.join("upstream")).await?;
    println!("bench: seeding a {} MiB layer into {}", args.layer_mib, upstream.url);
    let seeded = seed::seed(&client, &upstream.url, (args.layer_mib as usize) * 1024 * 1024).await?;

    // Straight from the upstream: the baseline for the cold pull (its file is in the page cache
    // after the warming pull, as every cache's upstream reads will find it).
    let direct_url = format!("{}/v2/{}/blobs/{}", upstream.url, seed::REPO, seeded.layer_digest);
    load::pull(&client, &direct_url, seeded.layer_size, Some(&seeded.layer_digest)).await?;
    let mut direct = Vec::new();
    for _ in 0..args.cold_reps {
        direct.push(load::timed_pull(&client, &direct_url, seeded.layer_size).await?.as_secs_f64());
    }
    let direct_secs = load::median(direct);
    println!("bench: direct upstream pull {direct_secs:.3} s");

    let mut results = Vec::new();
    for kind in Kind::ALL {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == kind.short()) {
            continue;
        }
        println!("bench: measuring {}", kind.label());
        let r = measure(kind, &args, &client, &programs, &upstream, &seeded, &work).await;
        for n in &r.notes {
            println!("bench:   problem: {n}");
        }
        results.push(r);
    }

    let run = Run {
        date: report::today(),
        machine: machine(),
        load: (load_start, load_average()),
        versions: versions(&programs),
        layer_mib: args.layer_mib,
        parallel: args.parallel,
        stampede: args.stampede,
        connections: args.connections,
        wrk_seconds: args.wrk_seconds,
        cold_reps: args.cold_reps,
        single_rounds: args.single_rounds,
        parallel_rounds: args.parallel_rounds,
        direct_secs,
        direct_mibs: seeded.layer_size as f64 / MIB / direct_secs,
        systems: results,
    };
    let mut table = report::markdown(&run);
    fs::create_dir_all(&args.results_dir).map_err(BenchError::io("create results dir"))?;
    report::plot(&run, &args.results_dir, &run.date)?;
    fs::copy(args.results_dir.join(format!("{}.png", run.date)), args.results_dir.join("latest.png"))
        .map_err(BenchError::io("copy plot"))?;
    table.push_str(&format!("\n![cache-hit throughput per system]({}.png)\n", run.date));
    println!("\n{table}");
    fs::write(args.results_dir.join(format!("{}.md", run.date)), &table).map_err(BenchError::io("write results"))?;
    fs::write(args.results_dir.join("latest.md"), table.replace(&format!("]({}.png)", run.date), "](latest.png)"))
        .map_err(BenchError::io("write latest.md"))?;
    println!("bench: wrote {}/{{{}.md,latest.md,{}.png,latest.png}}", args.results_dir.display(), run.date, run.date);

    drop(upstream);
    if args.keep {
        println!("bench: kept {}", tmp.keep().display());
    }
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// All measurements for one system. A failed step is recorded as a note and leaves its
/// numbers empty; the run goes on with the next step or system.
async fn measure(
    kind: Kind,
    args: &Args,
    client: &reqwest::Client,
    programs: &Programs,
    upstream: &Upstream,
    seeded: &seed::Seeded,
    work: &Path,
) -> SystemResult {
    let mut r = SystemResult::new(kind);
    let mut sys = match System::new(kind, work.join(kind.short()), &upstream.url) {
        Ok(sys) => sys,
        Err(e) => {
            r.notes.push(e.to_string());
            return r;
        }
    };
    if let Err(e) = sys.start(client, programs).await {
        r.notes.push(format!("start: {e}"));
        return r;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    r.rss_rest_mib = Some(mib(procstat::read(&sys.pids()).rss_kib));
    let blob_url = format!("{}/v2/{}/blobs/{}", sys.url, seed::REPO, seeded.layer_digest);
    let size = seeded.layer_size;

    // Cold pulls: the first on the fresh start, then one after each reset.
    let mut colds = Vec::new();
    for i in 0..args.cold_reps {
        if i > 0
            && let Err(e) = sys.reset(client, programs).await
        {
            r.notes.push(format!("reset before cold pull: {e}"));
            return r;
        }
        match load::timed_pull(client, &blob_url, size).await {
            Ok(d) => colds.push(d.as_secs_f64()),
            Err(e) => {
                r.notes.push(format!("cold pull: {e}"));
                return r;
            }
        }
    }
    r.cold_secs = Some(load::median(colds));
    println!("bench:   cold pull {:.3} s", r.cold_secs.unwrap_or(f64::NAN));

    // The cached bytes must be the layer's before any rate means anything.
    match load::pull(client, &blob_url, size, Some(&seeded.layer_digest)).await {
        Ok(_) => r.verified = Some(true),
        Err(e) => {
            r.verified = Some(false);
            r.notes.push(format!("verification pull: {e}"));
        }
    }

    let pids = sys.pids();
    let cpu_before = procstat::read(&pids).cpu_ticks;
    let mut served = 0u64;
    let start = Instant::now();
    let mut single_ok = true;
    for _ in 0..args.single_rounds {
        match load::pull(client, &blob_url, size, None).await {
            Ok(n) => served += n,
            Err(e) => {
                r.notes.push(format!("single-client pull: {e}"));
                single_ok = false;
                break;
            }
        }
    }
    if single_ok {
        r.single_mibs = Some(served as f64 / MIB / start.elapsed().as_secs_f64());
    }

    procstat::reset_peak(&pids);
    let sampler = procstat::RssSampler::start(pids.clone());
    let (bytes, wall, failures, first) =
        load::parallel_pulls(client, &blob_url, size, args.parallel, args.parallel_rounds).await;
    let sampled = sampler.finish().await;
    r.rss_peak_mib = Some(mib(procstat::read(&pids).hwm_kib));
    r.rss_peak_sampled_mib = Some(mib(sampled));
    served += bytes;
    if failures == 0 {
        r.parallel_mibs = Some(bytes as f64 / MIB / wall.as_secs_f64());
    } else {
        r.notes.push(format!("{failures} parallel pulls failed, first: {}", first.unwrap_or_default()));
    }
    let cpu_after = procstat::read(&pids).cpu_ticks;
    let cpu_secs = (cpu_after - cpu_before) as f64 / procstat::clock_ticks_per_second();
    r.cpu_per_gib = Some(cpu_secs / (served as f64 / GIB));
    println!(
        "bench:   cache hits {:.0} MiB/s (1 client), {:.0} MiB/s ({} parallel)",
        r.single_mibs.unwrap_or(f64::NAN),
        r.parallel_mibs.unwrap_or(f64::NAN),
        args.parallel
    );

    // Manifest request rates, each URL warmed once so the digest run measures cache hits.
    let manifests = format!("{}/v2/{}/manifests", sys.url, seed::REPO);
    for (reference, slot) in [(seeded.manifest_digest.as_str(), 0), (seed::TAG, 1)] {
        let url = format!("{manifests}/{reference}");
        let warm = client.get(&url).header("accept", seed::MANIFEST_TYPE).send().await;
        if let Err(e) = warm.map_err(|e| e.to_string()).and_then(|r| r.error_for_status().map_err(|e| e.to_string())) {
            r.notes.push(format!("warming GET {url}: {e}"));
            continue;
        }
        let (connections, seconds) = (args.connections, args.wrk_seconds);
        let wrk_url = url.clone();
        let rate = tokio::task::spawn_blocking(move || load::wrk(&wrk_url, seed::MANIFEST_TYPE, connections, seconds))
            .await
            .map_err(|e| BenchError::Other(format!("wrk task: {e}")))
            .and_then(|r| r);
        match rate {
            Ok(rps) if slot == 0 => r.digest_rps = Some(rps),
            Ok(rps) => r.tag_rps = Some(rps),
            Err(e) => r.notes.push(format!("manifest rate for {reference}: {e}")),
        }
    }
    println!(
        "bench:   manifests {:.0} req/s by digest, {:.0} req/s by tag",
        r.digest_rps.unwrap_or(f64::NAN),
        r.tag_rps.unwrap_or(f64::NAN)
    );

    // A stampede on an empty cache.
    if let Err(e) = sys.reset(client, programs).await {
        r.notes.push(format!("reset before the concurrent cold pulls: {e}"));
        return r;
    }
    let pids = sys.pids();
    procstat::reset_peak(&pids);
    let before = upstream.blob_gets(seed::REPO, &seeded.layer_digest);
    let (_, wall, failures, first) = load::parallel_pulls(client, &blob_url, size, args.stampede, 1).await;
    let after = upstream.blob_gets(seed::REPO, &seeded.layer_digest);
    r.rss_peak_stampede_mib = Some(mib(procstat::read(&pids).hwm_kib));
    match (before, after) {
        (Ok((c0, b0)), Ok((c1, b1))) => {
            r.stampede_fetches = Some(c1 - c0);
            r.stampede_upstream_mib = Some((b1 - b0) as f64 / MIB);
        }
        (Err(e), _) | (_, Err(e)) => r.notes.push(format!("upstream access log: {e}")),
    }
    r.stampede_secs = Some(wall.as_secs_f64());
    r.stampede_failures = Some(failures);
    if let Some(first) = first {
        r.notes.push(format!("{failures} of {} concurrent cold pulls failed, first: {first}", args.stampede));
    }
    println!(
        "bench:   {} concurrent cold pulls: {} upstream GETs, {:.2} s, {} failed",
        args.stampede,
        r.stampede_fetches.map_or("?".into(), |f| f.to_string()),
        wall.as_secs_f64(),
        failures
    );
    sys.stop();
    r
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| l.strip_prefix("model name")?.split(':').nth(1).map(|s| s.trim().to_owned()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:")?.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB, Linux {}", kernel.trim())
}

fn versions(programs: &Programs) -> Vec<(String, String)> {
    let git = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    vec![
        (
            "dependency-proxy".into(),
            format!(
                "{} (commit {git}, release build)",
                procs::version_of(&programs.proxy.to_string_lossy(), "--version")
            ),
        ),
        ("upstream and distribution".into(), procs::version_of(&programs.registry.to_string_lossy(), "--version")),
        ("nginx".into(), procs::version_of(&programs.nginx.to_string_lossy(), "-v")),
        ("wrk".into(), procs::version_of("wrk", "-v")),
    ]
}
