//! Every fuzz target on stable Rust, in `make test`: its seeds, every committed input under
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` (crashes found and fixed), then
//! mutations of those (bit flips, byte changes, cuts, splices and repeats from a fixed
//! seed) for a bounded time. libFuzzer's coverage-guided runs are `make fuzz`'s. With
//! `VPOD_FUZZ_LAST_INPUT=FILE`, each mutation is written to FILE before it runs, so one that
//! hangs or aborts can be kept.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vpod_fuzz_targets::{Target, TARGETS};

/// Time for each target's mutations, after its committed inputs (debug builds are slow).
const MUTATION_BUDGET: Duration = Duration::from_millis(1500);
/// And at most this many mutations per target.
const MAX_MUTATIONS: usize = 2000;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The committed inputs of `target`, corpus then regressions, by path.
fn committed(target: &Target) -> Vec<(PathBuf, Vec<u8>)> {
    let mut inputs = Vec::new();
    for folder in ["corpus", "regressions"] {
        let dir = fuzz_dir().join(folder).join(target.name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let bytes = std::fs::read(&path).expect("a committed fuzz input");
            inputs.push((path, bytes));
        }
    }
    inputs
}

/// A small deterministic generator (xorshift64*), so a failing mutation is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut input = base.to_vec();
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(6) {
            0 if len > 0 => {
                let at = rng.below(len);
                input[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                input[at] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)];
            }
            2 if len > 0 => input.truncate(rng.below(len)),
            3 if !other.is_empty() && len > 0 => {
                let at = rng.below(len);
                let from = rng.below(other.len());
                let take = rng.below(other.len() - from).min(64) + 1;
                input.splice(at..at, other[from..from + take].iter().copied());
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let take = (len - at).min(rng.below(16) + 1);
                let chunk = input[at..at + take].to_vec();
                input.splice(at..at, chunk);
            }
            _ if len > 0 => {
                let at = rng.below(len);
                let value = rng.next().to_le_bytes();
                let end = (at + 4).min(len);
                input[at..end].copy_from_slice(&value[..end - at]);
            }
            _ => input.push(rng.next() as u8),
        }
    }
    input
}

fn replay(target: &Target) {
    let mut inputs: Vec<Vec<u8>> = (target.seeds)().into_iter().map(|(_, s)| s).collect();
    for seed in &inputs {
        (target.run)(seed);
    }
    for (path, bytes) in committed(target) {
        eprintln!("{}: {}", target.name, path.display());
        (target.run)(&bytes);
        inputs.push(bytes);
    }
    let started = Instant::now();
    let mut rng = Rng(0x5eed_0000 ^ target.name.len() as u64);
    let mut runs = 0;
    while runs < MAX_MUTATIONS && started.elapsed() < MUTATION_BUDGET {
        let base = &inputs[rng.below(inputs.len())];
        let other = &inputs[rng.below(inputs.len())];
        let input = mutate(&mut rng, base, other);
        if let Some(path) = std::env::var_os("VPOD_FUZZ_LAST_INPUT") {
            // For a mutation that hangs or aborts: the input being run is in this file.
            std::fs::write(path, &input).expect("the last input");
        }
        (target.run)(&input);
        runs += 1;
    }
    eprintln!(
        "{}: {} committed and seed inputs, {runs} mutations",
        target.name,
        inputs.len()
    );
}

fn target(name: &str) -> &'static Target {
    TARGETS
        .iter()
        .find(|t| t.name == name)
        .expect("a target of that name")
}

macro_rules! replay_tests {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                replay(target($name));
            }
        )*

        #[test]
        fn every_target_has_a_replay_test_and_a_corpus() {
            let tested = [$($name),*];
            for target in TARGETS {
                assert!(tested.contains(&target.name), "{} is not replayed", target.name);
                let corpus = fuzz_dir().join("corpus").join(target.name);
                assert!(corpus.is_dir(), "{} has no corpus folder", corpus.display());
                let binary = fuzz_dir().join("fuzz_targets").join(format!("{}.rs", target.name));
                assert!(binary.is_file(), "{} has no libFuzzer binary", target.name);
            }
        }
    };
}

replay_tests! {
    virtio_mmio_inputs_replay_without_panics => "virtio_mmio",
    block_request_inputs_replay_without_panics => "block_request",
    vsock_packet_inputs_replay_without_panics => "vsock_packet",
    vsock_muxer_inputs_replay_without_panics => "vsock_muxer",
    vsock_connection_inputs_replay_without_panics => "vsock_connection",
    net_frames_inputs_replay_without_panics => "net_frames",
    agent_request_inputs_replay_without_panics => "agent_request",
    layer_tar_inputs_replay_without_panics => "layer_tar",
    oci_documents_inputs_replay_without_panics => "oci_documents",
    cri_log_inputs_replay_without_panics => "cri_log",
}
