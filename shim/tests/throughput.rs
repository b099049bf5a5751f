//! Conversion throughput of a layer against plain `tar -xf` of the same tar. `make test`
//! runs it on 8 MiB (a conversion check); `make bench` sets VPOD_BENCH_LAYER_MIB=128:
//! `VPOD_BENCH_LAYER_MIB=128 cargo test --release -p vpod-shim --test throughput -- --nocapture`

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use common::{write_layout, Fixture};
use vpod_shim::oci::writer::LayerCompression;

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

#[test]
fn conversion_throughput_against_tar_extract() {
    let tar = generated_tar();
    let megabytes = tar.len() as f64 / (1 << 20) as f64;
    let fixture = Fixture::new();

    let tar_path = fixture.temp.path().join("layer.tar");
    std::fs::write(&tar_path, &tar).unwrap();
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
        &[(tar.clone(), LayerCompression::None)],
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
    encoder.write_all(&tar).unwrap();
    let gzip_blob = encoder.finish().unwrap();
    let writer =
        vpod_shim::oci::writer::OciLayoutWriter::create(gzip_fixture.layout_dir("gzip")).unwrap();
    let layer = writer
        .write_layer(&vpod_shim::oci::writer::EncodedLayer {
            blob: gzip_blob,
            diff_id: vpod_shim::Digest::of_bytes(&tar),
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
}
