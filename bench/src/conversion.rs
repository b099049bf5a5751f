//! `vpod-bench conversion` (native): the layer store's conversion of a layer (import of an
//! OCI layout: digest, checked extraction, EROFS image) against plain `tar -xf` of the same
//! tar, `mkfs.erofs` of the extracted tree, and both. The tar is generated: about `mib` MiB
//! in files of 4 KiB to 1 MiB, half pseudo-random, half repetitive text, under 64
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
use vpod_image::LayerStore;

use crate::pod::Scratch;

/// What each run measures, in this order (the rows' `impl`).
const MEASURES: [&str; 5] = [
    "tar-xf",
    "mkfs-erofs",
    "tar-xf+mkfs-erofs",
    "vpod-import-tar",
    "vpod-import-gzip",
];

/// The tar entries' modification time.
const MTIME: u64 = 1_600_000_000;

pub fn conversion(root: &Path, runs: usize, mib: u64) -> Result<Vec<Row>> {
    let tar = generated_tar(mib << 20)?;
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); MEASURES.len()];
    for _ in 0..runs.max(1) {
        for (series, value) in seconds.iter_mut().zip(measure_once(&tar)?) {
            series.push(value);
        }
    }
    let config = format!("{}mib-tar", tar.len() >> 20);
    let rows: Vec<Row> = MEASURES
        .iter()
        .zip(&seconds)
        .map(|(imp, samples)| {
            let ms: Vec<f64> = samples.iter().map(|s| s * 1e3).collect();
            let row = Row::timing("layer_conversion", imp, &config, "native", &ms);
            Row {
                mb_s: row.timing.map(|t| tar.len() as f64 / (t.p50 / 1e3) / 1e6),
                ..row
            }
        })
        .collect();
    print!("{}", table(&rows));
    write_jsonl(&root.join("bench/results"), "conversion", &rows)?;
    Ok(rows)
}

/// About `total` bytes of files in a tar.
fn generated_tar(total: u64) -> Result<Vec<u8>> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
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

/// One run of every measure, in seconds (the order of MEASURES).
fn measure_once(tar: &[u8]) -> Result<[f64; 5]> {
    let megabytes = tar.len() as f64 / (1 << 20) as f64;
    let scratch = Scratch::new("conversion")?;
    let dir = &scratch.dir;

    let tar_path = dir.join("layer.tar");
    std::fs::write(&tar_path, tar)?;
    let extract_dir = dir.join("tar-xf");
    std::fs::create_dir(&extract_dir)?;
    let started = Instant::now();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tar_path)
        .arg("-C")
        .arg(&extract_dir))?;
    let tar_seconds = started.elapsed().as_secs_f64();

    let store = LayerStore::open(dir.join("store"))?;
    write_layout(
        &dir.join("plain"),
        &encode_layer(tar, LayerCompression::None)?,
    )?;
    let started = Instant::now();
    store.import_oci_layout(&reference(&dir.join("plain")))?;
    let plain_seconds = started.elapsed().as_secs_f64();
    let plain = store.import_oci_layout(&reference(&dir.join("plain")))?;
    if plain.layers.len() != 1 || !plain.layers[0].path.is_file() {
        bail!("the converted layer is missing");
    }

    // A second store for the gzip layer (the first would reuse the converted layer).
    let gzip_store = LayerStore::open(dir.join("gzip-store"))?;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(tar)?;
    let gzip = EncodedLayer {
        blob: encoder.finish()?,
        diff_id: vpod_image::Digest::of_bytes(tar),
        media_type: LayerCompression::Gzip.oci_media_type(),
    };
    write_layout(&dir.join("gzip"), &gzip)?;
    let started = Instant::now();
    gzip_store.import_oci_layout(&reference(&dir.join("gzip")))?;
    let gzip_seconds = started.elapsed().as_secs_f64();

    let mkfs_image = dir.join("mkfs-only.erofs");
    let started = Instant::now();
    run(Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(&mkfs_image)
        .arg(&extract_dir))?;
    std::fs::File::open(&mkfs_image)?.sync_all()?;
    let mkfs_seconds = started.elapsed().as_secs_f64();

    let baseline = tar_seconds + mkfs_seconds;
    println!("layer: {megabytes:.0} MiB uncompressed tar");
    for (what, seconds) in [
        ("tar -xf:                   ", tar_seconds),
        ("mkfs.erofs + fsync alone:  ", mkfs_seconds),
        ("tar -xf, mkfs.erofs, fsync:", baseline),
        ("import, uncompressed layer:", plain_seconds),
        ("import, gzip layer:        ", gzip_seconds),
    ] {
        println!("{what} {seconds:6.2} s {:7.0} MiB/s", megabytes / seconds);
    }
    Ok([
        tar_seconds,
        mkfs_seconds,
        baseline,
        plain_seconds,
        gzip_seconds,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `make test` keeps of the old 8 MiB conversion check: a small layer converts
    /// both ways, and every measure gives a row.
    #[test]
    fn a_small_layer_converts_and_every_measure_has_a_row() {
        let root = Scratch::new("conversion-test").expect("scratch");
        let rows = conversion(&root.dir, 1, 2).expect("the benchmark runs");
        let imps: Vec<&str> = rows.iter().map(|r| r.implementation.as_str()).collect();
        assert_eq!(imps, MEASURES);
        assert!(rows.iter().all(|r| r.mb_s.is_some_and(|v| v > 0.0)));
        let written = std::fs::read_to_string(root.dir.join("bench/results/conversion.jsonl"))
            .expect("the rows are written");
        assert_eq!(written.lines().count(), MEASURES.len());
        assert!(written.starts_with(
            r#"{"bench":"layer_conversion","impl":"tar-xf","config":"2mib-tar","host":"native","runs":1,"#
        ));
    }
}
