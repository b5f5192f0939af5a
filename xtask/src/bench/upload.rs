//! The `upload` scenario: a Garage and a second server storing in it, started for the scenario alone, and `oha`
//! uploading a ~1 MB JPEG as a seeded user's profile picture while a second `oha` sends `GET /me` at a fixed rate;
//! and the multipart body it sends.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::load::{Body, Load, get, probe, run_oha, start_background};
use super::options::Options;
use super::report::{Row, error_note};
use super::seed::SEED_DOMAIN;
use super::server::{Server, StartServer, login, user_id};
use super::system::Oha;
use crate::postgres::{literal, psql};
use crate::{garage, http, ui};

/// Connections of `upload`: as many as the server reads and processes pictures at once by default on this machine
/// (`PICTURE_MAX_CONCURRENT`, twice the two cores). With more, the extra uploads are shed at once with 503 before
/// their bodies are read, which measured the shedding rather than the pipeline (most requests of a run with 8
/// connections were such 503s).
const UPLOAD_CONNECTIONS: u32 = 4;

/// The seeded user who uploads a picture for themself in `upload` (not one the other scenarios log in as).
const UPLOAD_USER: u64 = 3;

/// The rate of `GET /me` sent beside the uploads, in requests per second: steady traffic of cheap reads, well below
/// what the server serves alone, so its latency shows what the uploads do to the other requests rather than a
/// queue of its own.
const ME_DURING_UPLOAD_RATE: u32 = 1_000;

/// Connections of the `GET /me` sent beside the uploads.
const ME_DURING_UPLOAD_CONNECTIONS: u32 = 16;

/// The boundary of the `upload` scenario's multipart body; the JPEG's bytes are checked not to contain it.
const UPLOAD_BOUNDARY: &str = "um-bench-boundary-7f3c9a2e51d84b06";

/// `upload`: starts a Garage (free ports, a fresh directory under `target/bench/garage`, its default bucket) and a
/// second server storing in it, logs in as a seeded user and has `oha` upload a ~1 MB JPEG to that user's own
/// `POST /users/{id}/profile-picture` on [`UPLOAD_CONNECTIONS`] connections, with `GET /me` at
/// [`ME_DURING_UPLOAD_RATE`] beside it: two rows. Garage, the second server and the pictures the run recorded are
/// gone afterwards; the `fs` server of the other scenarios idles meanwhile.
pub(super) fn upload(start: &StartServer<'_>, oha: &Oha, options: &Options) -> Result<Vec<Row>> {
    let bench_dir = crate::target_dir().join("bench");
    let body_path = bench_dir.join("upload.multipart");
    let jpeg_bytes = write_upload_body(&body_path)?;
    ui::info(&format!("test picture: 2000x1500 JPEG of {jpeg_bytes} bytes in {}", body_path.display()));

    let garage_bin = garage::ensure_installed()?;
    let garage_dir = bench_dir.join("garage");
    if garage_dir.exists() {
        std::fs::remove_dir_all(&garage_dir).with_context(|| format!("could not remove {}", garage_dir.display()))?;
    }
    std::fs::create_dir_all(&garage_dir).with_context(|| format!("could not create {}", garage_dir.display()))?;
    let [s3, rpc, admin] = http::free_ports::<3>()?;
    let mut storage =
        garage::start(&garage_bin, &garage_dir, &garage::Ports { s3, rpc, admin }, &bench_dir.join("garage.log"))?;
    let env = [
        ("STORAGE_BACKEND", "s3".to_owned()),
        ("S3_ENDPOINT", storage.endpoint.clone()),
        ("S3_REGION", garage::REGION.to_owned()),
        ("S3_BUCKET", garage::BUCKET.to_owned()),
        ("S3_ACCESS_KEY", storage.access_key.clone()),
        ("S3_SECRET_KEY", storage.secret_key.clone()),
    ];
    let outcome = start(&env).and_then(|mut server| {
        let outcome = upload_on(&server, oha, options, &body_path, jpeg_bytes);
        ui::step("Stopping the S3 server of `upload`");
        if let Err(error) = server.service.stop() {
            ui::warn(&format!("{error:#}"));
        }
        outcome
    });
    ui::step("Stopping Garage");
    if let Err(error) = storage.service.stop() {
        ui::warn(&format!("{error:#}"));
    }
    if let Err(error) = std::fs::remove_dir_all(&garage_dir) {
        ui::warn(&format!("could not remove {}: {error}", garage_dir.display()));
    }
    outcome
}

/// The measured part of `upload`, against `server` (which stores in Garage): the uploads, and `GET /me` at
/// [`ME_DURING_UPLOAD_RATE`] beside them.
fn upload_on(server: &Server, oha: &Oha, options: &Options, body_path: &Path, jpeg_bytes: usize) -> Result<Vec<Row>> {
    let email = format!("user{UPLOAD_USER}@{SEED_DOMAIN}");
    let id = user_id(server, &email)?;
    // The bucket is new, so pictures recorded by earlier runs would point at nothing; start and end without any.
    let clear = format!("DELETE FROM pictures WHERE user_id = {}", literal(&id));
    psql(&server.database_url, &clear)?;
    let token = login(server.addr, &email)?.access_token;
    let load = Load {
        url: server.url(&format!("/users/{id}/profile-picture")),
        method: "POST",
        body: Some(Body::File {
            content_type: format!("multipart/form-data; boundary={UPLOAD_BOUNDARY}"),
            path: body_path.to_path_buf(),
        }),
        bearer: Some(token),
        connections: UPLOAD_CONNECTIONS,
        expected_status: 200,
        rate: None,
    };
    let status = probe(server.addr, &load)?;
    if status != 200 {
        bail!("POST /users/{{id}}/profile-picture answered {status}");
    }
    let reader = login(server.addr, &format!("user1@{SEED_DOMAIN}"))?.access_token;
    let me = Load {
        rate: Some(ME_DURING_UPLOAD_RATE),
        ..get(server.url("/me"), Some(reader), ME_DURING_UPLOAD_CONNECTIONS)
    };
    let me_run = start_background(oha, &me, options)?;
    let measured = run_oha(oha, &load, options, server);
    let me_measured = me_run.finish();
    let rss_kib = server.rss_kib().ok();
    if let Err(error) = psql(&server.database_url, &clear) {
        ui::warn(&format!("could not delete the uploaded pictures' rows: {error:#}"));
    }
    let measured = measured?;
    let mut row = Row::new("upload");
    row.connections = Some(u64::from(load.connections));
    row.note = format!(
        "{:.2} MB JPEG 2000x1500 to Garage as user{UPLOAD_USER}{}",
        jpeg_bytes as f64 / 1_000_000.0,
        error_note(&measured)
    );
    row.measurement = Some(measured);
    row.rss_kib = rss_kib;

    let mut me_row = Row::new("upload: GET /me");
    me_row.connections = Some(u64::from(me.connections));
    match me_measured {
        Ok(me_measured) => {
            me_row.note = format!(
                "{ME_DURING_UPLOAD_RATE} req/s of GET /me (a fixed rate, waits counted) during the uploads{}",
                error_note(&me_measured)
            );
            me_row.measurement = Some(me_measured);
        }
        Err(error) => me_row.failure = Some(format!("{error:#}")),
    }
    Ok(vec![row, me_row])
}

/// Writes the `upload` request body to `path`: one multipart part `file` holding [`bench_jpeg`], framed by
/// [`UPLOAD_BOUNDARY`]. Returns the JPEG's size.
fn write_upload_body(path: &Path) -> Result<usize> {
    let jpeg = bench_jpeg()?;
    if jpeg.windows(UPLOAD_BOUNDARY.len()).any(|window| window == UPLOAD_BOUNDARY.as_bytes()) {
        bail!("the test JPEG happens to contain the multipart boundary");
    }
    let body = multipart_body(&jpeg);
    std::fs::write(path, body).with_context(|| format!("could not write {}", path.display()))?;
    Ok(jpeg.len())
}

/// `content` as the only part, `file`, of a `multipart/form-data` body with [`UPLOAD_BOUNDARY`].
fn multipart_body(content: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{UPLOAD_BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"bench.jpg\"\r\n\
         Content-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{UPLOAD_BOUNDARY}--\r\n").as_bytes());
    body
}

/// The picture `upload` sends: a 2000x1500 diagonal colour gradient with per-pixel noise from a fixed-seed
/// xorshift, as JPEG at quality 90. The noise is what makes it about 1 MB (a plain gradient compresses to a tenth).
pub(super) fn bench_jpeg() -> Result<Vec<u8>> {
    const WIDTH: u32 = 2000;
    const HEIGHT: u32 = 1500;
    let mut state: u32 = 0x9e37_79b9;
    let image = image::RgbImage::from_fn(WIDTH, HEIGHT, |x, y| {
        let mut channel = |base: u32| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = i64::from(state % 23) - 11;
            u8::try_from((i64::from(base) + noise).clamp(0, 255)).unwrap_or(0)
        };
        let red = x * 255 / WIDTH;
        let green = y * 255 / HEIGHT;
        let blue = (x + y) * 255 / (WIDTH + HEIGHT);
        image::Rgb([channel(red), channel(green), channel(blue)])
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&image)
        .context("could not encode the test JPEG")?;
    Ok(jpeg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upload_body_is_one_multipart_part_holding_a_jpeg_of_about_1_mb() -> Result<()> {
        let jpeg = bench_jpeg()?;
        assert!((900_000..=1_200_000).contains(&jpeg.len()), "the test JPEG is {} bytes", jpeg.len());
        assert_eq!(jpeg.get(..3), Some(&[0xff, 0xd8, 0xff][..]));
        let body = multipart_body(b"xyz");
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with(&format!("--{UPLOAD_BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"")));
        assert!(text.ends_with(&format!("\r\n\r\nxyz\r\n--{UPLOAD_BOUNDARY}--\r\n")));
        Ok(())
    }
}
