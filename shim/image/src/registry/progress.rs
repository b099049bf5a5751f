//! What a pull reports as it goes: the layers it fetches, their bytes as they arrive, and
//! each layer's disk when it is ready. Front ends draw bars from it (`vpod pull`) or log it
//! (`vpod-cri`); the pull itself neither draws nor logs.

use crate::digest::Digest;

/// One event of a pull, in the order they happen for each layer: `Resolved` once, then
/// for each layer fetched any number of `Fetched`, then its `LayerReady`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// The manifest and config are fetched and checked: the image's layers, lowest first.
    Resolved {
        /// The normalized reference being pulled.
        reference: String,
        layers: Vec<LayerPlan>,
    },
    /// `bytes` of layer `index`'s blob have arrived (a running total).
    Fetched { index: usize, bytes: u64 },
    /// Layer `index` is on disk in the store: `converted` by this pull, or found there.
    LayerReady { index: usize, converted: bool },
}

/// A layer as a pull sees it once the manifest is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPlan {
    /// The (usually compressed) blob's digest, as the manifest names it.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
    /// Already converted from this very blob: nothing to fetch.
    pub in_store: bool,
}

/// Receives a pull's events. Called from the pull's task, often (every few KiB of a blob):
/// keep it cheap, and do not block.
pub trait PullObserver: Send + Sync {
    fn event(&self, event: &PullEvent);
}

/// Ignores every event.
pub struct Quiet;

impl PullObserver for Quiet {
    fn event(&self, _event: &PullEvent) {}
}
