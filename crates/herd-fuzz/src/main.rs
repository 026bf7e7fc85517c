//! `herd-fuzz`: fuzzes herd's parsers of untrusted input on the stable toolchain.
//!
//! Mutational (AFL-style havoc over seeds from the repo's fixtures), guided by error novelty:
//! an input that reaches an error message not seen before joins the corpus. A panic, an abort
//! (stack overflow, failed allocation) or an execution running past the hang limit is a crash;
//! its input is saved under `OUT/crashes/TARGET/`. The supervisor runs the fuzzing in a child
//! process, which records each input in shared memory before running it, so even an abort
//! leaves the guilty input behind, and restarts the child after one.
//!
//! ```text
//! herd-fuzz list
//! herd-fuzz run TARGET --seconds N [--out DIR] [--seed S]   # prints one JSON line
//! herd-fuzz replay TARGET FILE|DIR...                          # every input must not crash
//! ```

mod mutate;
mod targets;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use targets::{Scratch, Target, TARGETS};

/// An execution slower than this is a hang.
const HANG: Duration = Duration::from_secs(10);
/// A worker's exit code when it could not start (no seeds, no tokenizers): not a crash.
const SETUP_FAILED: i32 = 3;
/// Shared-memory layout: [executions u64][crashes-seen u64][input length u64][input bytes].
const SHM_HEADER: usize = 24;

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn main() -> std::process::ExitCode {
    match run_cli() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("herd-fuzz: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn target(name: &str) -> Result<&'static Target> {
    TARGETS
        .iter()
        .find(|t| t.name == name)
        .with_context(|| format!("unknown target `{name}`; `herd-fuzz list` names them"))
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn run_cli() -> Result<std::process::ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    install_fuzz_limits();
    match args.first().map(String::as_str) {
        Some("list") => {
            for t in &TARGETS {
                println!("{:<16} {}", t.name, t.about);
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Some("run") => {
            let t = target(args.get(1).context("run TARGET")?)?;
            let seconds: u64 = flag(&args, "--seconds").unwrap_or_else(|| "60".into()).parse()?;
            let out = PathBuf::from(flag(&args, "--out").unwrap_or_else(|| "target/fuzz".into()));
            let seed: u64 = flag(&args, "--seed").unwrap_or_else(|| "1".into()).parse()?;
            supervise(t, seconds, &out, seed)
        }
        Some("worker") => {
            let t = target(args.get(1).context("worker TARGET")?)?;
            let shm = PathBuf::from(flag(&args, "--shm").context("--shm")?);
            let until = Instant::now() + Duration::from_millis(flag(&args, "--millis").context("--millis")?.parse()?);
            let seed: u64 = flag(&args, "--seed").context("--seed")?.parse()?;
            let out = PathBuf::from(flag(&args, "--out").context("--out")?);
            if let Err(e) = worker(t, &shm, until, seed, &out) {
                eprintln!("herd-fuzz worker: {e:#}");
                return Ok(std::process::ExitCode::from(SETUP_FAILED as u8));
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Some("replay") => {
            let t = target(args.get(1).context("replay TARGET FILE|DIR...")?)?;
            let scratch = scratch()?;
            let mut n = 0;
            for arg in &args[2..] {
                for file in inputs_in(Path::new(arg))? {
                    let bytes = std::fs::read(&file).with_context(|| file.display().to_string())?;
                    let started = Instant::now();
                    let _ = (t.run)(&scratch, &bytes);
                    if started.elapsed() > HANG {
                        bail!("{}: took {:?}", file.display(), started.elapsed());
                    }
                    n += 1;
                }
            }
            println!("{}: replayed {n} inputs, no crash", t.name);
            Ok(std::process::ExitCode::SUCCESS)
        }
        _ => bail!("usage: herd-fuzz list | run TARGET --seconds N [--out DIR] [--seed S] | replay TARGET FILE|DIR..."),
    }
}

/// Small limits, so one execution stays fast (the defaults allow 64 MiB prompts).
fn install_fuzz_limits() {
    herd_limits::Limits {
        template_steps: 200_000,
        template_output_bytes: 1 << 20,
        prompt_bytes: 1 << 20,
        image_pixels: 4 << 20,
        ..Default::default()
    }
    .install();
}

fn scratch() -> Result<Scratch> {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("herd-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(Scratch { dir })
}

fn inputs_in(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        Ok(files)
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

/// Runs workers until the time is up, restarting after each abort; prints a JSON line.
fn supervise(t: &Target, seconds: u64, out: &Path, seed: u64) -> Result<std::process::ExitCode> {
    let crashes_dir = out.join("crashes").join(t.name);
    std::fs::create_dir_all(&crashes_dir)?;
    let shm_dir = scratch()?.dir;
    let shm_path = shm_dir.join("shm");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut executions, mut crashes, mut aborts) = (0u64, 0u64, 0u64);
    let mut round = 0u64;
    while Instant::now() < deadline {
        {
            let f = std::fs::File::create(&shm_path)?;
            f.set_len((SHM_HEADER + t.max_len) as u64)?;
        }
        let millis = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .max(1);
        let status = std::process::Command::new(std::env::current_exe()?)
            .args(["worker", t.name, "--shm"])
            .arg(&shm_path)
            .args([
                "--millis",
                &millis.to_string(),
                "--seed",
                &(seed.wrapping_mul(1000) + round).to_string(),
                "--out",
            ])
            .arg(out)
            .status()?;
        let shm = std::fs::read(&shm_path)?;
        let word = |i: usize| {
            shm.get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        executions += word(0);
        crashes += word(1);
        if status.code() == Some(SETUP_FAILED) {
            bail!("{}: the worker could not start (see above)", t.name);
        }
        if !status.success() {
            // The worker died mid-input (abort, stack overflow, hang): that input is in shm.
            aborts += 1;
            crashes += 1;
            let len = (word(2) as usize).min(t.max_len);
            let input = shm.get(SHM_HEADER..SHM_HEADER + len).unwrap_or_default();
            let file = crashes_dir.join(
                format!("abort-{round}-{status}.bin")
                    .replace(' ', "_")
                    .replace(':', ""),
            );
            std::fs::write(&file, input)?;
            eprintln!(
                "{}: worker died ({status}); input saved to {}",
                t.name,
                file.display()
            );
        }
        round += 1;
    }
    let _ = std::fs::remove_dir_all(&shm_dir);
    println!(
        "{}",
        serde_json::json!({"target": t.name, "seconds": seconds, "executions": executions, "crashes": crashes, "aborts": aborts, "crash_dir": crashes_dir})
    );
    Ok(if crashes == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

fn worker(t: &Target, shm_path: &Path, until: Instant, seed: u64, out: &Path) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(shm_path)?;
    // SAFETY: the file is ours alone (created by the supervisor for this worker) and is not
    // resized while mapped.
    let mut shm = unsafe { memmap2::MmapMut::map_mut(&file)? };
    let scratch = scratch()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut corpus: Vec<Vec<u8>> = (t.seeds)(&fixtures_dir());
    if corpus.is_empty() {
        bail!("{}: no seeds found under {}", t.name, fixtures_dir().display());
    }
    let mut seen_errors = std::collections::HashSet::new();
    let crashes_dir = out.join("crashes").join(t.name);
    std::fs::create_dir_all(&crashes_dir)?;

    // Panics are caught and saved; the default report would flood stderr.
    std::panic::set_hook(Box::new(|_| {}));
    // A watchdog turns a hang into an abort, which the supervisor records.
    static STARTED_MS: AtomicU64 = AtomicU64::new(0);
    let epoch = Instant::now();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        let started = STARTED_MS.load(Ordering::Relaxed);
        if started > 0 && epoch.elapsed().as_millis() as u64 > started + HANG.as_millis() as u64 {
            eprintln!("hang: one execution ran past {HANG:?}");
            std::process::abort();
        }
    });

    let (mut executions, mut crashes) = (0u64, 0u64);
    let mut index = 0usize;
    while Instant::now() < until {
        // Seeds first, unchanged; then mutations of corpus entries.
        let input = if index < corpus.len() && executions < corpus.len() as u64 {
            corpus[index].clone()
        } else {
            let a = rng.random_range(0..corpus.len());
            let b = rng.random_range(0..corpus.len());
            mutate::mutate(&mut rng, &corpus[a], &corpus[b], t.dictionary, t.max_len)
        };
        index += 1;
        let len = input.len().min(t.max_len);
        shm[16..24].copy_from_slice(&(len as u64).to_le_bytes());
        shm[SHM_HEADER..SHM_HEADER + len].copy_from_slice(&input[..len]);
        STARTED_MS.store(epoch.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
        let result = std::panic::catch_unwind(|| (t.run)(&scratch, &input));
        STARTED_MS.store(0, Ordering::Relaxed);
        executions += 1;
        match result {
            Err(panic) => {
                crashes += 1;
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let file = crashes_dir.join(format!("panic-{seed}-{executions}.bin"));
                std::fs::write(&file, &input)?;
                eprintln!("{}: panic: {message}; input saved to {}", t.name, file.display());
            }
            Ok(Err(message)) => {
                // Error novelty: the message without its numbers names an error path.
                let key: String = message.chars().filter(|c| !c.is_ascii_digit()).take(60).collect();
                if seen_errors.insert(key) && corpus.len() < 4096 {
                    corpus.push(input);
                }
            }
            Ok(Ok(())) => {
                if rng.random_bool(0.01) && corpus.len() < 4096 {
                    corpus.push(input);
                }
            }
        }
        if executions % 256 == 0 {
            shm[0..8].copy_from_slice(&executions.to_le_bytes());
            shm[8..16].copy_from_slice(&crashes.to_le_bytes());
        }
    }
    shm[0..8].copy_from_slice(&executions.to_le_bytes());
    shm[8..16].copy_from_slice(&crashes.to_le_bytes());
    shm.flush()?;
    let _ = std::fs::remove_dir_all(&scratch.dir);
    Ok(())
}
