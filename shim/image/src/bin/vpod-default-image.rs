//! Builds vpod's default image (busybox, two layers) as an OCI layout:
//! `vpod-default-image OUT_DIR [--busybox PATH]`; import it as `oci:OUT_DIR:latest`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use vpod_image::default_image::{build_default_image, DEFAULT_BUSYBOX, DEFAULT_IMAGE_TAG};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let mut out_dir = None;
    let mut busybox = PathBuf::from(DEFAULT_BUSYBOX);
    while let Some(arg) = args.next() {
        if arg == "--busybox" {
            busybox = args.next().context("--busybox needs a path")?.into();
        } else if arg == "-h" || arg == "--help" {
            println!("usage: vpod-default-image OUT_DIR [--busybox PATH]");
            return Ok(());
        } else if out_dir.is_none() {
            out_dir = Some(PathBuf::from(arg));
        } else {
            bail!(
                "unexpected argument {arg:?}; usage: vpod-default-image OUT_DIR [--busybox PATH]"
            );
        }
    }
    let out_dir = out_dir.context("usage: vpod-default-image OUT_DIR [--busybox PATH]")?;
    let manifest = build_default_image(&out_dir, &busybox)
        .with_context(|| format!("building the default image in {}", out_dir.display()))?;
    println!(
        "oci:{}:{DEFAULT_IMAGE_TAG} {}",
        out_dir.display(),
        manifest.digest()
    );
    Ok(())
}
