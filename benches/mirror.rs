//! Benchmark: copycat against skopeo, measured in the same run on the same machine.
//!
//! `cargo bench --bench mirror` (release build). Two local docker-registry processes; a data set of
//! about 25 repositories and 900 MiB (20 single-arch images of 5 × 8 MiB layers, 5 multi-arch indexes
//! of 2 × 3 × 4 MiB with attestations). `copycat sync` and `skopeo sync` run interleaved, cold (target
//! wiped) and warm (everything present), `BENCH_PAIRS` pairs (default 3); every target digest is
//! checked after every run of either tool, cold and warm. Then `copycat copy` against `skopeo copy` of one image with a single
//! 1 GiB layer (`BENCH_BIG_MIB` to change the size), for wall time and peak RSS.
//! Prints medians of wall time and client CPU (user + sys) and the ratios copycat / skopeo.
//! Then the cost of `referrers: all` (the default) against `none` on the same data set, which has no
//! signatures, attestations or SBOMs: `copycat sync --referrers all|none` interleaved, cold (target
//! wiped, fresh state file) and warm, with the requests each run sent to the source and to the
//! target. Warm twice: with the state file the cold run left (an image already at the target is
//! looked at once per `referrersInterval`, as for a cron job's runs) and with none (every image
//! looked at again, as in a fresh container). `BENCH_ONLY=referrers` runs that part alone;
//! `BENCH_WARM_RUNS=N` takes N warm runs per mode, phase and pair (alternating the modes, for a
//! steadier median of runs that last a tenth of a second); `BENCH_REQUESTS=1` prints each of its
//! runs' requests. `BENCH_COPYCAT=<path>` measures another copycat binary (the referrers part needs
//! one that knows `sync --state`).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use testkit::{Image, Registry, RegistryMode};

/// One measured run of a client process.
#[derive(Debug, Clone, Copy)]
struct Run {
    wall: Duration,
    cpu: Duration,
    max_rss_kib: u64,
}

/// Runs `cmd`; `wait4` gives that process's own CPU time. Peak RSS is the process's `VmHWM`, polled:
/// `ru_maxrss` would report the benchmark's own size, which a spawned child inherits until `exec`.
fn measure(cmd: &mut Command) -> Run {
    let started = Instant::now();
    let child = cmd.stdin(std::process::Stdio::null()).spawn().expect("spawn client");
    let pid = child.id() as libc::pid_t;
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let poller = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = vm_hwm_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet reaped (std's Child is never waited on), and the
    // pointers are valid for the call.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    done.store(true, Ordering::Relaxed);
    poller.join().expect("RSS poller");
    assert_eq!(rc, pid, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed with status {status}"
    );
    std::mem::forget(child);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Run {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kib: peak.load(Ordering::Relaxed),
    }
}

/// `VmHWM` of a running process, in KiB.
fn vm_hwm_kib(pid: libc::pid_t) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn ratio(a: Duration, b: Duration) -> String {
    format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64().max(1e-9))
}

/// The copycat binary measured: this build's, or `BENCH_COPYCAT` (another build, e.g. main's, to
/// compare against on the same data in the same run of the registries).
fn copycat() -> Command {
    let binary = std::env::var("BENCH_COPYCAT").unwrap_or_else(|_| env!("CARGO_BIN_EXE_copycat").to_owned());
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("LOG_FORMAT", "text")
        .env("LOG_LEVEL", "warn")
        .env("CONFIG_PATH", "/dev/null");
    cmd
}

fn skopeo() -> Command {
    let mut cmd = Command::new("skopeo");
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        cmd.env_remove(var);
    }
    cmd
}

/// Checks that every target repository holds the source digest.
fn verify(rt: &tokio::runtime::Runtime, dst: &Registry, expected: &[(String, String)]) {
    for (repo, digest) in expected {
        let got = rt
            .block_on(testkit::manifest_digest(dst, repo, "v1"))
            .expect("HEAD target");
        assert_eq!(
            got.as_deref(),
            Some(digest.as_str()),
            "{repo}: target digest differs from the source"
        );
    }
}

fn wipe(dst: &Registry) {
    dst.wipe().expect("wipe target");
    // Let the previous run's writeback settle so it does not land in the next measurement.
    let _ = Command::new("sync").status();
}

fn main() {
    let pairs: usize = std::env::var("BENCH_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let big_mib: u64 = std::env::var("BENCH_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let src = Registry::start(RegistryMode::Plain).expect("source registry");
    let dst = Registry::start(RegistryMode::Plain).expect("target registry");
    let work = tempfile::tempdir().expect("temp dir");

    eprintln!("seeding the source registry…");
    let mut expected = Vec::new();
    let mut total = 0u64;
    for i in 0..25u64 {
        let image = if i < 20 {
            Image::oci("amd64", &[8 << 20; 5], 1000 + i)
        } else {
            Image::oci_index(&[4 << 20; 3], true, 2000 + i)
        }
        .expect("image");
        let repo = format!("bench/img{i:02}");
        rt.block_on(image.push(&src, &repo, "v1")).expect("seed");
        total += image.all_blobs().iter().map(|b| b.size).sum::<u64>();
        expected.push((repo, image.digest.clone()));
    }
    eprintln!("data set: {} repositories, {} MiB", expected.len(), total >> 20);

    let images_file = work.path().join("images.yaml");
    let mut text = format!("targetRepoPrefix: \"{}/\"\nimages:\n", dst.host());
    for (repo, _) in &expected {
        text.push_str(&format!("  - source: \"{}/{repo}:v1\"\n", src.host()));
    }
    std::fs::write(&images_file, text).expect("images file");
    let skopeo_file = work.path().join("skopeo.yaml");
    let mut text = format!("{}:\n  tls-verify: false\n  images:\n", src.host());
    for (repo, _) in &expected {
        text.push_str(&format!("    {repo}: [v1]\n"));
    }
    std::fs::write(&skopeo_file, text).expect("skopeo sync file");

    let copycat_sync = || {
        let mut c = copycat();
        c.args(["sync", "--images"]).arg(&images_file);
        c
    };
    let skopeo_sync = |file: &Path| {
        let mut c = skopeo();
        c.args([
            "sync",
            "--all",
            "--preserve-digests",
            "--src",
            "yaml",
            "--dest",
            "docker",
            "--dest-tls-verify=false",
        ])
        .arg(file)
        .arg(format!("{}/bench", dst.host()));
        c
    };

    let referrers_only = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "referrers");
    if referrers_only {
        referrers_cost(&rt, &src, &dst, &images_file, &expected, pairs);
        return;
    }

    let (mut cc, mut cw, mut sc, mut sw) = (vec![], vec![], vec![], vec![]);
    for pair in 0..pairs {
        let order: [bool; 2] = if pair % 2 == 0 { [true, false] } else { [false, true] };
        for is_copycat in order {
            wipe(&dst);
            let sync = || {
                if is_copycat {
                    measure(&mut copycat_sync())
                } else {
                    measure(&mut skopeo_sync(&skopeo_file))
                }
            };
            // Each run is checked on its own: a cold run that left work undone must not be
            // completed (and hidden) by the warm one.
            let cold = sync();
            verify(&rt, &dst, &expected);
            let warm = sync();
            verify(&rt, &dst, &expected);
            let name = if is_copycat { "copycat" } else { "skopeo " };
            eprintln!(
                "pair {pair}: {name} cold {} (cpu {}), warm {} (cpu {})",
                secs(cold.wall),
                secs(cold.cpu),
                secs(warm.wall),
                secs(warm.cpu)
            );
            if is_copycat {
                cc.push(cold);
                cw.push(warm);
            } else {
                sc.push(cold);
                sw.push(warm);
            }
        }
    }

    eprintln!("seeding one image with a single {big_mib} MiB layer…");
    let big = Image::oci("amd64", &[big_mib << 20], 4242).expect("big image");
    rt.block_on(big.push(&src, "bench/big", "v1")).expect("seed big");
    let big_expected = vec![("bench/big".to_owned(), big.digest.clone())];
    let (mut cb, mut sb) = (vec![], vec![]);
    for pair in 0..pairs {
        for is_copycat in if pair % 2 == 0 { [true, false] } else { [false, true] } {
            wipe(&dst);
            let run = if is_copycat {
                let mut c = copycat();
                c.args([
                    "copy",
                    &format!("{}/bench/big:v1", src.host()),
                    &format!("{}/bench/big:v1", dst.host()),
                ]);
                measure(&mut c)
            } else {
                let mut c = skopeo();
                c.args([
                    "copy",
                    "-q",
                    "--all",
                    "--preserve-digests",
                    "--src-tls-verify=false",
                    "--dest-tls-verify=false",
                ])
                .arg(format!("docker://{}/bench/big:v1", src.host()))
                .arg(format!("docker://{}/bench/big:v1", dst.host()));
                measure(&mut c)
            };
            verify(&rt, &dst, &big_expected);
            if is_copycat { cb.push(run) } else { sb.push(run) }
        }
    }

    let wall = |v: &[Run]| median(v.iter().map(|r| r.wall).collect());
    let cpu = |v: &[Run]| median(v.iter().map(|r| r.cpu).collect());
    let rss = |v: &[Run]| v.iter().map(|r| r.max_rss_kib).max().unwrap_or(0);
    println!(
        "\n## copycat vs skopeo ({} repositories, {} MiB, {pairs} interleaved pairs, medians)\n",
        expected.len(),
        total >> 20
    );
    println!("| scenario | copycat wall | skopeo wall | wall ratio | copycat CPU | skopeo CPU | CPU ratio |");
    println!("|---|---|---|---|---|---|---|");
    for (name, c, s) in [
        ("sync, cold", &cc, &sc),
        ("sync, warm", &cw, &sw),
        (&format!("copy, one {big_mib} MiB layer") as &str, &cb, &sb),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            secs(wall(c)),
            secs(wall(s)),
            ratio(wall(c), wall(s)),
            secs(cpu(c)),
            secs(cpu(s)),
            ratio(cpu(c), cpu(s))
        );
    }
    println!(
        "\nPeak RSS copying the {big_mib} MiB layer: copycat {} MiB, skopeo {} MiB.",
        rss(&cb) / 1024,
        rss(&sb) / 1024
    );
    println!(
        "Cold sync peak RSS: copycat {} MiB, skopeo {} MiB.",
        rss(&cc) / 1024,
        rss(&sc) / 1024
    );
    referrers_cost(&rt, &src, &dst, &images_file, &expected, pairs);
}

/// `copycat sync --referrers all` against `--referrers none` on images without related artifacts:
/// interleaved pairs, cold (target wiped, fresh state file) and warm: a warm run with the state file
/// the cold run left (the looks are remembered for `referrersInterval`, as a cron job's runs are)
/// and one without any (every image looked at again, as in a fresh container); wall time and the
/// requests sent to the source and the target.
fn referrers_cost(
    rt: &tokio::runtime::Runtime,
    src: &Registry,
    dst: &Registry,
    images_file: &Path,
    expected: &[(String, String)],
    pairs: usize,
) {
    /// The runs of one (mode, phase), with the requests each sent to the source and the target.
    type Runs = (Vec<Run>, Vec<usize>, Vec<usize>);
    const PHASES: [&str; 3] = ["cold", "warm", "warm, no state"];
    let show_requests = std::env::var("BENCH_REQUESTS").is_ok_and(|v| v == "1");
    let warm_runs: usize = std::env::var("BENCH_WARM_RUNS")
        .ok()
        .map(|v| {
            v.parse()
                .expect("BENCH_WARM_RUNS is a number of warm runs per mode and pair")
        })
        .unwrap_or(1)
        .clamp(1, 50);
    let state_dir = tempfile::tempdir().expect("temp dir");
    let state = |mode: &str| state_dir.path().join(format!("{mode}.json"));
    let mut runs: std::collections::BTreeMap<(&str, &str), Runs> = Default::default();
    let mut run_one = |pair: usize, mode: &'static str, phase: &'static str| {
        let (src_before, dst_before) = (src.requests().len(), dst.requests().len());
        let mut c = copycat();
        c.args(["sync", "--referrers", mode, "--images"]).arg(images_file);
        // The bench's environment has no HOME: without `--state`, nothing is remembered.
        if phase != PHASES[2] {
            c.arg("--state").arg(state(mode));
        }
        let run = measure(&mut c);
        let (src_log, dst_log) = (src.requests(), dst.requests());
        verify(rt, dst, expected);
        let (src_log, dst_log) = (&src_log[src_before..], &dst_log[dst_before..]);
        eprintln!(
            "pair {pair}: referrers {mode} {phase} {} ({} source, {} target requests)",
            secs(run.wall),
            src_log.len(),
            dst_log.len()
        );
        if show_requests {
            for (side, log) in [("source", src_log), ("target", dst_log)] {
                for r in log {
                    eprintln!("    {side} {} {} {}", r.status, r.method, r.path);
                }
            }
        }
        let entry = runs.entry((mode, phase)).or_default();
        entry.0.push(run);
        entry.1.push(src_log.len());
        entry.2.push(dst_log.len());
    };
    for pair in 0..pairs {
        let order = if pair % 2 == 0 {
            ["all", "none"]
        } else {
            ["none", "all"]
        };
        for mode in order {
            wipe(dst);
            let _ = std::fs::remove_file(state(mode));
            run_one(pair, mode, PHASES[0]);
        }
        // A warm run lasts a tenth of a second, so its median needs more samples than the cold
        // one's: the warm runs alternate the modes on the same, complete target.
        for _ in 0..warm_runs {
            for phase in &PHASES[1..] {
                for mode in order {
                    run_one(pair, mode, phase);
                }
            }
        }
    }
    println!(
        "\n## referrers: all vs none ({} repositories without related artifacts, {pairs} interleaved pairs, \
         {warm_runs} warm runs per mode and pair, medians)\n",
        expected.len()
    );
    println!(
        "| sync | `none` wall | `all` wall | wall ratio | CPU `none` / `all` | source requests `none` / `all` | target requests `none` / `all` |"
    );
    println!("|---|---|---|---|---|---|---|");
    for phase in PHASES {
        let (none_runs, none_src, none_dst) = &runs[&("none", phase)];
        let (all_runs, all_src, all_dst) = &runs[&("all", phase)];
        let wall = |runs: &[Run]| median(runs.iter().map(|r| r.wall).collect());
        let cpu = |runs: &[Run]| median(runs.iter().map(|r| r.cpu).collect());
        let (none_wall, all_wall) = (wall(none_runs), wall(all_runs));
        let counts = |v: &[usize]| {
            let (lo, hi) = (v.iter().min().unwrap_or(&0), v.iter().max().unwrap_or(&0));
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}–{hi}")
            }
        };
        println!(
            "| {phase} | {} | {} | {} | {} / {} | {} / {} | {} / {} |",
            secs(none_wall),
            secs(all_wall),
            ratio(all_wall, none_wall),
            secs(cpu(none_runs)),
            secs(cpu(all_runs)),
            counts(none_src),
            counts(all_src),
            counts(none_dst),
            counts(all_dst)
        );
    }
}
