//! Two importers of the same layer at once, as threads and as processes: both succeed and
//! the store holds one image per layer.

mod common;

use std::process::Command;
use std::sync::{Arc, Barrier};

use common::{dir_entries, write_layout, Fixture, LayerTar};
use vpod_image::oci::writer::LayerCompression;
use vpod_image::LayerStore;

fn big_layer_image(fixture: &Fixture) -> String {
    let mut tar = LayerTar::new();
    for i in 0..200 {
        tar = tar.file(&format!("dir{}/file{i}", i % 10), &"x".repeat(10_000 + i));
    }
    write_layout(
        &fixture.layout_dir("image"),
        &[(tar.finish(), LayerCompression::Gzip)],
        "t",
    );
    fixture.reference("image", "t")
}

fn assert_one_image_per_layer(fixture: &Fixture) {
    let layers = dir_entries(&fixture.store.root().join("layers/sha256"));
    assert_eq!(
        layers.iter().filter(|n| n.ends_with(".erofs")).count(),
        1,
        "{layers:?}"
    );
    assert_eq!(
        dir_entries(&fixture.store.root().join("tmp")),
        Vec::<String>::new()
    );
}

#[test]
fn two_threads_importing_the_same_layer_both_succeed() {
    let fixture = Fixture::new();
    let reference = big_layer_image(&fixture);
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let reference = reference.clone();
            let root = fixture.store.root().to_owned();
            std::thread::spawn(move || {
                // Each thread opens its own store handle, as separate processes would.
                let store = LayerStore::open(root).unwrap();
                barrier.wait();
                store.import_oci_layout(&reference)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let first = results[0].as_ref().expect("first import");
    let second = results[1].as_ref().expect("second import");
    assert_eq!(first, second);
    assert_one_image_per_layer(&fixture);
}

/// The test binary re-runs itself in child processes to import with a separate process.
const CHILD_ENV: &str = "VPOD_SHIM_TEST_IMPORT_CHILD";

#[test]
fn child_process_import() {
    // Run only as a child of the test below.
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (root, reference) = spec.split_once('\n').unwrap();
        LayerStore::open(root)
            .unwrap()
            .import_oci_layout(reference)
            .unwrap();
    }
}

#[test]
fn two_processes_importing_the_same_layer_both_succeed() {
    let fixture = Fixture::new();
    let reference = big_layer_image(&fixture);
    let spec = format!("{}\n{reference}", fixture.store.root().display());
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "child_process_import", "--nocapture"])
                .env(CHILD_ENV, &spec)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    assert_one_image_per_layer(&fixture);
    let images = fixture.store.list_images().unwrap();
    assert_eq!(images.len(), 1);
}
