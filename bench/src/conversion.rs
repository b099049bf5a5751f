//! `vpod-bench conversion` (native): the layer store's conversion of a layer (import of an
//! OCI layout: digest, diffID, EROFS image, fsync) with its single-pass writer, against the
//! staged path it replaced (checked extraction into a directory, then `mkfs.erofs`, kept as
//! `LayerConverter::StagedMkfs`) and plain `tar -xf` of the same tar (also timed until a
//! `sync` after it has written it back, as the importers' fsync does), uncompressed and gzip.
//! Two generated tars: about `mib` MiB in files of 4 KiB to 1 MiB (half pseudo-random, half
//! repetitive text) under 64 directories, and `files` small files (0 to 4 KiB) under 500
//! directories. Each run measures everything once, so drift on a shared machine hits all
//! alike. Rows go to `bench/results/conversion.jsonl` (MB/s of uncompressed tar at the
//! median).

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use vpod_bench::report::{table, write_jsonl, Row};
use vpod_image::oci::writer::{encode_layer, EncodedLayer, LayerCompression, OciLayoutWriter};
use vpod_image::{LayerConverter, LayerStore, LayerStoreOptions};

use crate::pod::Scratch;

/// What each run measures per tar, in this order (the rows' `impl`).
const MEASURES: [&str; 6] = [
    "tar-xf",
    "tar-xf-sync",
    "staged-import-tar",
    "staged-import-gzip",
    "vpod-import-tar",
    "vpod-import-gzip",
];

/// The tar entries' modification time.
const MTIME: u64 = 1_600_000_000;

pub fn conversion(root: &Path, runs: usize, mib: u64, files: usize) -> Result<Vec<Row>> {
    let tars = [
        (format!("{mib}mib-tar"), generated_tar(mib << 20)?),
        (format!("{files}-files-tar"), small_files_tar(files)?),
    ];
    let mut rows = Vec::new();
    for (config, tar) in &tars {
        let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); MEASURES.len()];
        for _ in 0..runs.max(1) {
            for (series, value) in seconds.iter_mut().zip(measure_once(config, tar)?) {
                series.push(value);
            }
        }
        rows.extend(MEASURES.iter().zip(&seconds).map(|(imp, samples)| {
            let ms: Vec<f64> = samples.iter().map(|s| s * 1e3).collect();
            let row = Row::timing("layer_conversion", imp, config, "native", &ms);
            Row {
                mb_s: row.timing.map(|t| tar.len() as f64 / (t.p50 / 1e3) / 1e6),
                ..row
            }
        }));
    }
    print!("{}", table(&rows));
    write_jsonl(&root.join("bench/results"), "conversion", &rows)?;
    Ok(rows)
}

/// `count` files of 0 to 4 KiB (pseudo-random sizes, text content) under 500 directories.
fn small_files_tar(count: usize) -> Result<Vec<u8>> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut builder = tar::Builder::new(Vec::new());
    let text = b"the quick brown fox jumps over the lazy dog\n".repeat(100);
    for index in 0..count {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let size = (state % 4097) as usize;
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(size as u64);
        header.set_mtime(MTIME);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(
            &mut header,
            format!("dir{}/small-file-{index}", index % 500),
            &text[..size],
        )?;
    }
    Ok(builder.into_inner()?)
}

/// About `total` bytes of files in a tar.
fn generated_tar(total: u64) -> Result<Vec<u8>> {
    generated_tar_seeded(total, 0x9e37_79b9_7f4a_7c15)
}

/// As `generated_tar`, its pseudo-random half drawn from `seed` (non-zero): different
/// seeds give different layers.
pub fn generated_tar_seeded(total: u64, seed: u64) -> Result<Vec<u8>> {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let total = total as usize;
    let mut builder = tar::Builder::new(Vec::with_capacity(total + (8 << 20)));
    let mut written = 0;
    let mut index = 0;
    while written < total {
        let size = 4096 + (next() as usize % (1 << 20));
        let content: Vec<u8> = if index % 2 == 0 {
            (0..size).map(|_| next() as u8).collect()
        } else {
            b"the quick brown fox jumps over the lazy dog\n"
                .iter()
                .copied()
                .cycle()
                .take(size)
                .collect()
        };
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(size as u64);
        header.set_mtime(MTIME);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(
            &mut header,
            format!("d{}/file{index}", index % 64),
            content.as_slice(),
        )?;
        written += size;
        index += 1;
    }
    Ok(builder.into_inner()?)
}

/// An OCI layout at `dir` with one layer, tagged `t`.
fn write_layout(dir: &Path, layer: &EncodedLayer) -> Result<()> {
    let writer = OciLayoutWriter::create(dir)?;
    let written = writer.write_layer(layer)?;
    let manifest = writer.write_image(Default::default(), &[written], Some("t"))?;
    writer.write_index(vec![manifest])?;
    Ok(())
}

fn reference(dir: &Path) -> String {
    format!("oci:{}:t", dir.display())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Imports the layout at `layout` into a new store at `store_dir`; returns the seconds.
fn timed_import(store_dir: &Path, layout: &Path, converter: LayerConverter) -> Result<f64> {
    let store = LayerStore::open_with(
        store_dir,
        LayerStoreOptions {
            converter,
            ..Default::default()
        },
    )?;
    settle();
    let started = Instant::now();
    let image = store.import_oci_layout(&reference(layout))?;
    let seconds = started.elapsed().as_secs_f64();
    if image.layers.len() != 1 || !image.layers[0].path.is_file() {
        bail!("the converted layer is missing");
    }
    Ok(seconds)
}

/// Writes back every dirty page before a measure starts (untimed): on ext4 (data=ordered)
/// the converter's fsync commits the journal, which first writes the data that earlier
/// measures left dirty, so without this each measure pays for the ones before it.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// One run of every measure, in seconds (the order of MEASURES).
fn measure_once(config: &str, tar: &[u8]) -> Result<[f64; 6]> {
    let megabytes = tar.len() as f64 / (1 << 20) as f64;
    let scratch = Scratch::new("conversion")?;
    let dir = &scratch.dir;

    let tar_path = dir.join("layer.tar");
    std::fs::write(&tar_path, tar)?;
    let extract_dir = dir.join("tar-xf");
    std::fs::create_dir(&extract_dir)?;
    settle();
    let started = Instant::now();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tar_path)
        .arg("-C")
        .arg(&extract_dir))?;
    let tar_seconds = started.elapsed().as_secs_f64();
    // The same, written back to the disk before the clock stops, as the importers' fsync
    // does for their image.
    settle();
    let tar_sync_seconds = started.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&extract_dir)?;

    write_layout(
        &dir.join("plain"),
        &encode_layer(tar, LayerCompression::None)?,
    )?;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(tar)?;
    let gzip = EncodedLayer {
        blob: encoder.finish()?,
        diff_id: vpod_image::Digest::of_bytes(tar),
        media_type: LayerCompression::Gzip.oci_media_type(),
    };
    write_layout(&dir.join("gzip"), &gzip)?;

    // A new store for each import (a store reuses a converted layer).
    let staged = || LayerConverter::StagedMkfs(Default::default());
    let staged_plain = timed_import(&dir.join("s1"), &dir.join("plain"), staged())?;
    let staged_gzip = timed_import(&dir.join("s2"), &dir.join("gzip"), staged())?;
    let plain = timed_import(&dir.join("w1"), &dir.join("plain"), LayerConverter::Writer)?;
    let gzip = timed_import(&dir.join("w2"), &dir.join("gzip"), LayerConverter::Writer)?;

    println!("layer: {config}, {megabytes:.0} MiB uncompressed tar");
    for (what, seconds) in [
        ("tar -xf:                          ", tar_seconds),
        ("tar -xf, then sync:               ", tar_sync_seconds),
        ("staged import, uncompressed layer:", staged_plain),
        ("staged import, gzip layer:        ", staged_gzip),
        ("import, uncompressed layer:       ", plain),
        ("import, gzip layer:               ", gzip),
    ] {
        println!("{what} {seconds:6.2} s {:7.0} MiB/s", megabytes / seconds);
    }
    Ok([
        tar_seconds,
        tar_sync_seconds,
        staged_plain,
        staged_gzip,
        plain,
        gzip,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `make test` keeps of the old 8 MiB conversion check: small layers convert
    /// every way, and every measure gives a row for each tar.
    #[test]
    fn small_layers_convert_and_every_measure_has_a_row() {
        let root = Scratch::new("conversion-test").expect("scratch");
        let rows = conversion(&root.dir, 1, 2, 300).expect("the benchmark runs");
        let imps: Vec<&str> = rows.iter().map(|r| r.implementation.as_str()).collect();
        assert_eq!(imps, [MEASURES, MEASURES].concat());
        assert!(rows.iter().all(|r| r.mb_s.is_some_and(|v| v > 0.0)));
        let written = std::fs::read_to_string(root.dir.join("bench/results/conversion.jsonl"))
            .expect("the rows are written");
        assert_eq!(written.lines().count(), 2 * MEASURES.len());
        assert!(written.starts_with(
            r#"{"bench":"layer_conversion","impl":"tar-xf","config":"2mib-tar","host":"native","runs":1,"#
        ));
        assert!(written.contains(r#""config":"300-files-tar""#));
    }
}
