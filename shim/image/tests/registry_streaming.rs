//! Pulls that convert each layer as it downloads: the layer's EROFS image grows while its
//! blob is still arriving, the blob never lands on disk, layers of one image run side by
//! side, and the progress events a front end draws from come in order.

mod common;
mod registry_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use common::{Fixture, LayerTar, MTIME};
use registry_support::gate::BlobGate;
use registry_support::{Setup, TestRegistry};
use vpod_image::oci::writer::LayerCompression;
use vpod_image::registry::progress::{PullEvent, PullObserver};
use vpod_image::registry::{Images, RegistryOptions};
use vpod_image::LayerStore;

const MIB: u64 = 1 << 20;

/// A tar holding one file of `size` pseudo-random (incompressible) bytes.
fn random_file_tar(name: &str, size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut data = Vec::with_capacity(size);
    while data.len() < size {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(size);
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_path(name).unwrap();
    header.set_size(size as u64);
    header.set_mode(0o644);
    header.set_mtime(MTIME);
    header.set_cksum();
    builder.append(&header, data.as_slice()).unwrap();
    builder.into_inner().unwrap()
}

/// Pushes an image of `layers` (tar, compression) as `vpod/streamed:v1`; its layers' digests.
fn push_image(registry: &TestRegistry, layers: Vec<(Vec<u8>, LayerCompression)>) -> Vec<String> {
    registry.push_layers(&layers, "vpod/streamed:v1")
}

/// Images in `store` that pull plainly from the registry at `address` (`HOST:PORT`).
fn images_over(store: LayerStore, address: &str) -> Images {
    let options = RegistryOptions {
        insecure_registries: vec![address.to_owned()],
        ..RegistryOptions::default()
    };
    Images::open(store, options).expect("open images")
}

/// Every event, and what was on disk under the store's `tmp` when a layer's blob had
/// arrived up to `look_at` bytes.
struct Recorder {
    tmp: PathBuf,
    look_at: u64,
    events: Mutex<Vec<PullEvent>>,
    /// (largest EROFS image being written, largest file of a pull's staging layout).
    seen: Mutex<Option<(u64, u64)>>,
}

impl PullObserver for Recorder {
    fn event(&self, event: &PullEvent) {
        if let PullEvent::Fetched { bytes, .. } = event {
            let mut seen = self.seen.lock().unwrap();
            if *bytes >= self.look_at && seen.is_none() {
                *seen = Some(largest_files(&self.tmp));
            }
        }
        self.events.lock().unwrap().push(event.clone());
    }
}

/// Pulls `vpod/streamed:v1` from `address` into `fixture`'s store, recording what happens
/// (and what is on disk once `look_at` bytes of a blob arrived); the recorder and the image.
async fn pull_recorded(
    images: &Images,
    address: &str,
    fixture: &Fixture,
    look_at: u64,
) -> (Recorder, vpod_image::registry::ImageRecord) {
    let recorder = Recorder {
        tmp: fixture.store.root().join("tmp"),
        look_at,
        events: Mutex::default(),
        seen: Mutex::default(),
    };
    let record = images
        .pull_with_progress(&format!("{address}/vpod/streamed:v1"), None, &recorder)
        .await
        .expect("pull");
    (recorder, record)
}

/// The largest EROFS image being written (`<diffID>.erofs.<unique>`) under `tmp`, and the largest file below a pull's
/// staging directory (`tmp/pull.*`).
fn largest_files(tmp: &Path) -> (u64, u64) {
    let mut erofs = 0;
    let mut staged = 0;
    let mut stack = vec![(tmp.to_owned(), false)];
    while let Some((dir, in_staging)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push((entry.path(), in_staging || name.starts_with("pull.")));
            } else if in_staging {
                staged = staged.max(meta.len());
            } else if name.contains(".erofs.") {
                erofs = erofs.max(meta.len());
            }
        }
    }
    (erofs, staged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_converts_while_it_downloads_and_its_blob_never_lands_on_disk() {
    let registry = TestRegistry::start(Setup::default());
    let size = 24 * MIB as usize;
    push_image(
        &registry,
        vec![
            (random_file_tar("big", size, 7), LayerCompression::None),
            (
                LayerTar::new().file("small", "hello").finish(),
                LayerCompression::Gzip,
            ),
        ],
    );
    let fixture = Fixture::new();
    let images = images_over(
        LayerStore::open(fixture.store.root()).unwrap(),
        &registry.address,
    );
    let (recorder, record) = pull_recorded(&images, &registry.address, &fixture, 16 * MIB).await;
    assert_eq!(record.image.layers.len(), 2);

    let (erofs, staged) = recorder.seen.lock().unwrap().expect("16 MiB arrived");
    // The pipe holds 4 MiB: 12 MiB of file data had reached the converter by then.
    assert!(
        erofs > 4 * MIB,
        "the EROFS image held {erofs} bytes after 16 MiB of its blob arrived"
    );
    assert!(
        staged < MIB,
        "a {staged}-byte file was in the pull's staging layout: a layer blob was written"
    );

    let events = std::mem::take(&mut *recorder.events.lock().unwrap());
    let PullEvent::Resolved { layers, .. } = &events[0] else {
        panic!("the first event is {:?}", events[0]);
    };
    assert_eq!(layers.len(), 2);
    assert!(layers.iter().all(|layer| !layer.in_store));
    for (index, layer) in layers.iter().enumerate() {
        let fetched: Vec<u64> = events
            .iter()
            .filter_map(|event| match event {
                PullEvent::Fetched { index: i, bytes } if *i == index => Some(*bytes),
                _ => None,
            })
            .collect();
        assert!(
            fetched.windows(2).all(|pair| pair[0] < pair[1]),
            "{fetched:?}"
        );
        assert_eq!(fetched.last(), Some(&layer.size), "layer {index}");
        let ready: Vec<usize> = events
            .iter()
            .enumerate()
            .filter(|(_, event)| {
                matches!(event, PullEvent::LayerReady { index: i, converted: true } if *i == index)
            })
            .map(|(position, _)| position)
            .collect();
        assert_eq!(ready.len(), 1, "layer {index} is ready once");
        let last_fetch = events
            .iter()
            .rposition(|event| matches!(event, PullEvent::Fetched { index: i, .. } if *i == index))
            .unwrap();
        assert!(
            ready[0] > last_fetch,
            "layer {index} is ready after its bytes"
        );
    }

    // Again: everything is in the store, nothing is fetched.
    let (again, _) = pull_recorded(&images, &registry.address, &fixture, u64::MAX).await;
    let events = again.events.lock().unwrap();
    assert!(
        matches!(&events[0], PullEvent::Resolved { layers, .. } if layers.iter().all(|l| l.in_store)),
        "{:?}",
        events[0]
    );
    assert_eq!(
        events[1..],
        [
            PullEvent::LayerReady {
                index: 0,
                converted: false
            },
            PullEvent::LayerReady {
                index: 1,
                converted: false
            }
        ]
    );
    assert_eq!(images.counters().blobs_downloaded, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_of_one_image_stream_side_by_side() {
    let registry = TestRegistry::start(Setup::default());
    let size = 4 * MIB as usize;
    let layers = push_image(
        &registry,
        (0..3)
            .map(|seed| {
                (
                    random_file_tar(&format!("f{seed}"), size, seed + 11),
                    LayerCompression::None,
                )
            })
            .collect(),
    );
    // The gate answers no layer request until all three were made: a pull that waited for
    // one layer before asking for the next would sit there until the deadline.
    let gate = BlobGate::start(&registry.address, layers, Duration::from_secs(60));
    let fixture = Fixture::new();
    let images = images_over(
        LayerStore::open(fixture.store.root()).unwrap(),
        &gate.address,
    );
    let (recorder, record) = pull_recorded(&images, &gate.address, &fixture, u64::MAX).await;
    assert!(
        gate.all_requested_while_held(),
        "the pull did not ask for all three layers before any of them arrived"
    );
    assert_eq!(record.image.layers.len(), 3);
    assert_eq!(images.counters().layers_converted, 3);
    let events = recorder.events.lock().unwrap();
    let ready = events
        .iter()
        .filter(|event| {
            matches!(
                event,
                PullEvent::LayerReady {
                    converted: true,
                    ..
                }
            )
        })
        .count();
    assert_eq!(ready, 3, "{events:?}");
}
