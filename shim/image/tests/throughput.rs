//! Conversion throughput of a layer against plain `tar -xf` of the same tar. `make test`
//! runs it on 8 MiB (a conversion check); `make bench` sets VPOD_BENCH_LAYER_MIB=128:
//! `VPOD_BENCH_LAYER_MIB=128 cargo test --release -p vpod-image --test throughput -- --nocapture`
//! VPOD_BENCH_LAYER_RUNS repeats the whole comparison (3 under `make bench`); with
//! VPOD_BENCH_JSONL naming a file, the figures are also written there as vpod-bench rows
//! (`bench/results/conversion.jsonl` under `make bench`).

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use common::{write_layout, Fixture};
use vpod_image::oci::writer::LayerCompression;

/// Layer size: VPOD_BENCH_LAYER_MIB, 8 MiB by default.
fn total_bytes() -> usize {
    std::env::var("VPOD_BENCH_LAYER_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(8)
        << 20
}

/// About `total_bytes()` in files of 4 KiB to 1 MiB, half pseudo-random, half repetitive text,
/// under 64 directories.
fn generated_tar() -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let total = total_bytes();
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
        header.set_mtime(common::MTIME);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(
                &mut header,
                format!("d{}/file{index}", index % 64),
                content.as_slice(),
            )
            .unwrap();
        written += size;
        index += 1;
    }
    builder.into_inner().unwrap()
}

/// Runs of the whole comparison: VPOD_BENCH_LAYER_RUNS, 1 by default.
fn runs() -> usize {
    std::env::var("VPOD_BENCH_LAYER_RUNS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1)
}

/// What each run measures, in this order.
const MEASURES: [&str; 5] = [
    "tar-xf",
    "mkfs-erofs",
    "tar-xf+mkfs-erofs",
    "vpod-import-tar",
    "vpod-import-gzip",
];

#[test]
fn conversion_throughput_against_tar_extract() {
    let tar = generated_tar();
    // Each run measures everything once, so drift on a shared machine hits all alike.
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); MEASURES.len()];
    for _ in 0..runs() {
        for (series, value) in seconds.iter_mut().zip(measure_once(&tar)) {
            series.push(value);
        }
    }
    if let Some(path) = std::env::var_os("VPOD_BENCH_JSONL") {
        let config = format!("{}mib-tar", tar.len() >> 20);
        let rows: String = MEASURES
            .iter()
            .zip(&mut seconds)
            .map(|(imp, samples)| jsonl_row(imp, &config, tar.len(), samples))
            .collect();
        std::fs::write(&path, rows).expect("writing VPOD_BENCH_JSONL");
    }
}

/// One run of every measure, in seconds (the order of MEASURES).
fn measure_once(tar: &[u8]) -> [f64; 5] {
    let megabytes = tar.len() as f64 / (1 << 20) as f64;
    let fixture = Fixture::new();

    let tar_path = fixture.temp.path().join("layer.tar");
    std::fs::write(&tar_path, tar).unwrap();
    let extract_dir = fixture.temp.path().join("tar-xf");
    std::fs::create_dir(&extract_dir).unwrap();
    let started = Instant::now();
    let status = Command::new("tar")
        .arg("-xf")
        .arg(&tar_path)
        .arg("-C")
        .arg(&extract_dir)
        .status()
        .unwrap();
    assert!(status.success());
    let tar_seconds = started.elapsed().as_secs_f64();

    write_layout(
        &fixture.layout_dir("plain"),
        &[(tar.to_vec(), LayerCompression::None)],
        "t",
    );
    let started = Instant::now();
    fixture
        .store
        .import_oci_layout(&fixture.reference("plain", "t"))
        .unwrap();
    let plain_seconds = started.elapsed().as_secs_f64();
    let plain = fixture
        .store
        .import_oci_layout(&fixture.reference("plain", "t"))
        .unwrap();
    assert_eq!(plain.layers.len(), 1);
    assert!(plain.layers[0].path.is_file(), "the converted layer exists");

    // A second store for the gzip layer (the first would reuse the converted layer).
    let gzip_fixture = Fixture::new();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(tar).unwrap();
    let gzip_blob = encoder.finish().unwrap();
    let writer =
        vpod_image::oci::writer::OciLayoutWriter::create(gzip_fixture.layout_dir("gzip")).unwrap();
    let layer = writer
        .write_layer(&vpod_image::oci::writer::EncodedLayer {
            blob: gzip_blob,
            diff_id: vpod_image::Digest::of_bytes(tar),
            media_type: LayerCompression::Gzip.oci_media_type(),
        })
        .unwrap();
    let manifest = writer
        .write_image(Default::default(), &[layer], Some("t"))
        .unwrap();
    writer.write_index(vec![manifest]).unwrap();
    let started = Instant::now();
    gzip_fixture
        .store
        .import_oci_layout(&gzip_fixture.reference("gzip", "t"))
        .unwrap();
    let gzip_seconds = started.elapsed().as_secs_f64();

    let mkfs_image = fixture.temp.path().join("mkfs-only.erofs");
    let started = Instant::now();
    let status = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(&mkfs_image)
        .arg(&extract_dir)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::File::open(&mkfs_image)
        .unwrap()
        .sync_all()
        .unwrap();
    let mkfs_seconds = started.elapsed().as_secs_f64();

    println!("layer: {megabytes:.0} MiB uncompressed tar");
    println!(
        "tar -xf:                     {tar_seconds:6.2} s {:7.0} MiB/s",
        megabytes / tar_seconds
    );
    println!(
        "mkfs.erofs + fsync alone:    {mkfs_seconds:6.2} s {:7.0} MiB/s",
        megabytes / mkfs_seconds
    );
    let baseline = tar_seconds + mkfs_seconds;
    println!(
        "tar -xf, mkfs.erofs, fsync:  {baseline:6.2} s {:7.0} MiB/s",
        megabytes / baseline
    );
    println!(
        "import, uncompressed layer:  {plain_seconds:6.2} s {:7.0} MiB/s",
        megabytes / plain_seconds
    );
    println!(
        "import, gzip layer:          {gzip_seconds:6.2} s {:7.0} MiB/s",
        megabytes / gzip_seconds
    );
    [
        tar_seconds,
        mkfs_seconds,
        baseline,
        plain_seconds,
        gzip_seconds,
    ]
}

/// A series as a line of vpod-bench's JSONL (`bench/src/report.rs`): nearest-rank
/// percentiles of the times; MB/s is 10^6 bytes of uncompressed tar a second at the median.
fn jsonl_row(implementation: &str, config: &str, bytes: usize, seconds: &mut [f64]) -> String {
    seconds.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let r = ((p / 100.0) * seconds.len() as f64).ceil() as usize;
        seconds[r.clamp(1, seconds.len()) - 1] * 1e3
    };
    let p50 = rank(50.0);
    format!(
        "{{\"bench\":\"layer_conversion\",\"impl\":\"{implementation}\",\"config\":\"{config}\",\"host\":\"native\",\"runs\":{},\"p50_ms\":{p50:.3},\"p90_ms\":{:.3},\"min_ms\":{:.3},\"max_ms\":{:.3},\"rss_kib\":null,\"overhead_kib\":null,\"mb_s\":{:.3}}}\n",
        seconds.len(),
        rank(90.0),
        seconds[0] * 1e3,
        seconds[seconds.len() - 1] * 1e3,
        bytes as f64 / (p50 / 1e3) / 1e6
    )
}
