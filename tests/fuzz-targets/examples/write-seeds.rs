//! Writes every target's seeds to `fuzz/corpus/<target>/seed-<name>`, replacing older
//! seeds (files named otherwise, such as inputs libFuzzer found, are kept):
//! `cargo run -p vpod-fuzz-targets --example write-seeds`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for target in vpod_fuzz_targets::TARGETS {
        let dir = corpus.join(target.name);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with("seed-") {
                std::fs::remove_file(entry.path())?;
            }
        }
        let seeds = (target.seeds)();
        let bytes: usize = seeds.iter().map(|(_, s)| s.len()).sum();
        for (name, seed) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), seed)?;
        }
        println!("{}: {} bytes of seeds", target.name, bytes);
    }
    Ok(())
}
