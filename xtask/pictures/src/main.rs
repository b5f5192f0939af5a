//! `bench-pictures`: the ceiling `cargo xtask bench pictures` measures `upload` against.
//!
//! It runs the service's picture pipeline ([`ImagePipeline`], the adapter behind the upload route: type detection,
//! the header checks, the limited decode, orientation, the three resizes and encodes, on the same lower-priority
//! threads behind the same semaphore) on one picture over and over, with as many pictures in flight as the machine
//! has cores, for the given number of seconds. Nothing else: no HTTP, no multipart parsing, no storage, no database.
//! The difference between the two rates is what an upload spends around the pipeline, and the ceiling itself says
//! what rate this machine's cores allow at most.
//!
//! Usage: `bench-pictures <picture> <seconds>`. It prints the wall time of the whole run and then the time of each
//! picture, in microseconds, one number per line. Not part of the product.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use users_domain::ports::ImageProcessor as _;
use users_images::{ImagePipeline, PipelineConfig};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bench-pictures: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let [path, seconds] = args.as_slice() else {
        return Err("usage: bench-pictures <picture> <seconds>".to_owned());
    };
    let picture = std::fs::read(path).map_err(|error| format!("could not read {}: {error}", path.to_string_lossy()))?;
    let seconds = seconds.to_string_lossy();
    let seconds: u64 = seconds
        .parse()
        .ok()
        .filter(|seconds| *seconds <= 24 * 60 * 60)
        .ok_or_else(|| format!("`{seconds}` is not a whole number of seconds up to a day"))?;
    let in_flight = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|error| format!("could not build the runtime: {error}"))?;
    let (elapsed, times) = runtime.block_on(measure(picture, in_flight, Duration::from_secs(seconds)))?;
    let mut out = String::new();
    for time in std::iter::once(elapsed).chain(times) {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{}", time.as_micros());
    }
    std::io::stdout().write_all(out.as_bytes()).map_err(|error| format!("could not write the times: {error}"))
}

/// Processes `picture` on `in_flight` concurrent loops until `duration` has passed, every one with its own copy of
/// the bytes, as each upload has. Returns the wall time and the time of each picture.
async fn measure(picture: Vec<u8>, in_flight: usize, duration: Duration) -> Result<(Duration, Vec<Duration>), String> {
    // As many slots as loops, and a queue timeout no loop ever reaches: the ceiling never sheds.
    let pipeline =
        ImagePipeline::new(PipelineConfig { max_concurrent: in_flight, queue_timeout: Duration::from_secs(60) });
    let start = Instant::now();
    let end = start + duration;
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (pipeline, picture) = (pipeline.clone(), picture.clone());
        loops.spawn(async move {
            let mut times = Vec::new();
            while Instant::now() < end {
                let began = Instant::now();
                pipeline.process(picture.clone()).await.map_err(|error| format!("the pipeline refused: {error}"))?;
                times.push(began.elapsed());
            }
            Ok::<_, String>(times)
        });
    }
    let mut times = Vec::new();
    while let Some(joined) = loops.join_next().await {
        times.extend(joined.map_err(|error| format!("a loop failed: {error}"))??);
    }
    Ok((start.elapsed(), times))
}
