//! The `argon2` scenario: the raw argon2id hash rate with the server's parameters, measured in-process on one
//! thread per core, for the `login` figure to be compared with.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::report::{Row, measure_latencies, note_disturbance};
use super::seed::PASSWORD;
use super::system::{MachineMeter, own_cpu_ticks};
use crate::process;

/// How long the in-process argon2 measurement runs.
const ARGON2_DURATION: Duration = Duration::from_secs(5);

/// The argon2id parameters the server hashes with (`crates/crypto`): memory in KiB, iterations, lanes.
const ARGON2_PARAMS: (u32, u32, u32) = (19_456, 2, 1);

/// `argon2`: argon2id with the server's parameters on one thread per core, in-process, for [`ARGON2_DURATION`].
pub(super) fn argon2_rate() -> Result<Row> {
    use argon2::{Algorithm, Argon2, Params, Version};
    let (memory, iterations, lanes) = ARGON2_PARAMS;
    let params = Params::new(memory, iterations, lanes, Some(32)).map_err(|error| anyhow::anyhow!("{error}"))?;
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    // What else ran meanwhile is a note on the figures, not a reason to lose them: unreadable, it is left out.
    let machine = MachineMeter::start().ok();
    let own_before = own_cpu_ticks().ok();
    let start = Instant::now();
    let end = start + ARGON2_DURATION;
    let results: Vec<Result<Vec<Duration>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let params = params.clone();
                scope.spawn(move || -> Result<Vec<Duration>> {
                    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
                    let salt = [u8::try_from(thread % 256).unwrap_or(0); 16];
                    let mut output = [0_u8; 32];
                    let mut times = Vec::new();
                    while Instant::now() < end && !process::interrupted() {
                        let began = Instant::now();
                        argon2
                            .hash_password_into(PASSWORD.as_bytes(), &salt, &mut output)
                            .map_err(|error| anyhow::anyhow!("argon2 failed: {error}"))?;
                        times.push(began.elapsed());
                    }
                    Ok(times)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_else(|_| Err(anyhow::anyhow!("an argon2 thread panicked"))))
            .collect()
    });
    let elapsed = start.elapsed();
    let disturbance = machine.zip(own_before).and_then(|(machine, before)| {
        own_cpu_ticks().and_then(|after| machine.disturbance(after.saturating_sub(before))).ok()
    });
    let mut latencies = Vec::new();
    for result in results {
        latencies.extend(result?);
    }
    let mut row = Row::new("argon2");
    row.connections = Some(threads as u64);
    row.note = format!("in-process hashes/s, m={memory},t={iterations},p={lanes}, {threads} threads");
    row.measurement = Some(measure_latencies(latencies, elapsed));
    if let Some(disturbance) = disturbance {
        note_disturbance(&mut row, disturbance);
    }
    Ok(row)
}
