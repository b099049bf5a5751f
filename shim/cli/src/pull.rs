//! `vpod pull`, and `vpod run` of a registry image the store lacks: the pull through the
//! image crate, drawn as a progress bar per layer on a terminal (bytes, rate, time left),
//! or told in plain lines, one a layer, when stderr is not a terminal.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use vpod_image::registry::progress::{LayerPlan, PullEvent, PullObserver};
use vpod_image::registry::{ImageRecord, Images, RegistryOptions};
use vpod_image::LayerStore;

/// How registries are reached from the command line.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    pub insecure_registries: Vec<String>,
    /// Layers fetched and converted at once; `None`: the image crate's default.
    pub max_concurrent_downloads: Option<usize>,
}

/// The image `reference` names in the store under `root`, pulled first unless it is there
/// (a name pulled before, or a repo digest). Progress goes to stderr.
pub async fn ensure_image(
    root: &Path,
    reference: &str,
    options: &PullOptions,
) -> anyhow::Result<ImageRecord> {
    let images = open(root, options)?;
    let lookup = images.clone();
    let wanted = reference.to_owned();
    let found = tokio::task::spawn_blocking(move || lookup.status(&wanted))
        .await
        .context("looking up the image")?
        .with_context(|| format!("looking up {reference}"))?;
    // As `docker run`: an image in the store is used as it is (`vpod pull` updates it).
    match found {
        Some(record) => Ok(record),
        None => pull(&images, reference).await,
    }
}

/// `vpod pull IMAGE`: pulls it whether or not the store has it (the tag may have moved).
pub async fn pull_command(
    root: &Path,
    reference: &str,
    options: &PullOptions,
) -> anyhow::Result<ImageRecord> {
    let images = open(root, options)?;
    pull(&images, reference).await
}

fn open(root: &Path, options: &PullOptions) -> anyhow::Result<Images> {
    let store = LayerStore::open(root)
        .with_context(|| format!("opening the layer store in {}", root.display()))?;
    let defaults = RegistryOptions::default();
    let options = RegistryOptions {
        insecure_registries: options.insecure_registries.clone(),
        max_concurrent_downloads: options
            .max_concurrent_downloads
            .unwrap_or(defaults.max_concurrent_downloads)
            .max(1),
        ..defaults
    };
    Images::open(store, options).context("opening the image store")
}

async fn pull(images: &Images, reference: &str) -> anyhow::Result<ImageRecord> {
    let started = Instant::now();
    let progress = if std::io::stderr().is_terminal() {
        Progress::Bars(Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::default(),
        })
    } else {
        Progress::Lines(Lines::default())
    };
    let record = images
        .pull_with_progress(reference, None, &progress)
        .await
        .with_context(|| format!("pulling {reference}"));
    progress.finish();
    let record = record?;
    eprintln!(
        "vpod: pulled {reference} ({}) in {:.2} s: {} layers, {:.1} MB of layer disks",
        record.id,
        started.elapsed().as_secs_f64(),
        record.image.layers.len(),
        record.size_bytes as f64 / 1e6
    );
    Ok(record)
}

enum Progress {
    Bars(Bars),
    Lines(Lines),
}

impl Progress {
    fn finish(&self) {
        if let Progress::Bars(bars) = self {
            if let Ok(bars) = bars.bars.lock() {
                bars.iter().for_each(ProgressBar::abandon);
            }
        }
    }
}

impl PullObserver for Progress {
    fn event(&self, event: &PullEvent) {
        match self {
            Progress::Bars(bars) => bars.event(event),
            Progress::Lines(lines) => lines.event(event),
        }
    }
}

/// A bar per layer on a terminal.
struct Bars {
    multi: MultiProgress,
    bars: Mutex<Vec<ProgressBar>>,
}

impl Bars {
    fn event(&self, event: &PullEvent) {
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        match event {
            PullEvent::Resolved { layers, .. } => {
                let style = ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {eta:>4} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                for layer in layers {
                    let bar = self.multi.add(ProgressBar::new(layer.size));
                    bar.set_style(style.clone());
                    bar.set_prefix(short(layer));
                    bar.enable_steady_tick(Duration::from_millis(200));
                    if layer.in_store {
                        bar.set_position(layer.size);
                        bar.set_message("already in the store");
                    }
                    bars.push(bar);
                }
            }
            PullEvent::Fetched { index, bytes } => {
                if let Some(bar) = bars.get(*index) {
                    bar.set_position(*bytes);
                    if bar.position() >= bar.length().unwrap_or(u64::MAX) {
                        bar.set_message("converting");
                    }
                }
            }
            PullEvent::LayerReady { index, converted } => {
                if let Some(bar) = bars.get(*index) {
                    if *converted {
                        bar.finish_with_message("converted");
                    } else {
                        bar.finish();
                    }
                }
            }
        }
    }
}

/// A line per layer when stderr is a file or a pipe.
#[derive(Default)]
struct Lines {
    state: Mutex<(Vec<LayerPlan>, Option<Instant>)>,
}

impl Lines {
    fn event(&self, event: &PullEvent) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        match event {
            PullEvent::Resolved { reference, layers } => {
                let fetch: Vec<&LayerPlan> = layers.iter().filter(|l| !l.in_store).collect();
                eprintln!(
                    "vpod: pulling {reference}: {} layers, {} to fetch ({:.1} MB)",
                    layers.len(),
                    fetch.len(),
                    fetch.iter().map(|l| l.size).sum::<u64>() as f64 / 1e6
                );
                *state = (layers.clone(), Some(Instant::now()));
            }
            PullEvent::Fetched { .. } => {}
            PullEvent::LayerReady { index, converted } => {
                let (layers, started) = &*state;
                let Some(layer) = layers.get(*index) else {
                    return;
                };
                let secs = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
                let what = if layer.in_store {
                    "already in the store".to_owned()
                } else if *converted {
                    format!("{:.1} MB fetched and converted", layer.size as f64 / 1e6)
                } else {
                    format!(
                        "{:.1} MB fetched (converted by another pull)",
                        layer.size as f64 / 1e6
                    )
                };
                eprintln!(
                    "vpod: layer {}/{} {}: {what} at {secs:.2} s",
                    index + 1,
                    layers.len(),
                    short(layer)
                );
            }
        }
    }
}

/// `sha256:` and the first 12 hex digits of a layer's blob digest.
fn short(layer: &LayerPlan) -> String {
    let text = layer.digest.to_string();
    text.chars().take("sha256:".len() + 12).collect()
}
