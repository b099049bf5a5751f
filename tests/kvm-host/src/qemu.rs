//! The QEMU command line of the emulated host, and where its kernel and initramfs come from.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why the emulated host's kernel and initramfs could not be had.
#[derive(Debug, thiserror::Error)]
pub enum AssetsError {
    #[error("could not run the preparation script {script}")]
    Spawn {
        script: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the preparation script {script} failed ({status}); its messages are above")]
    Failed {
        script: PathBuf,
        status: std::process::ExitStatus,
    },
    #[error("the preparation script named {0}, which lacks vmlinuz or initrd.cpio")]
    Incomplete(PathBuf),
}

/// The emulated host's Debian kernel and our initramfs (busybox, modules, init).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assets {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl Assets {
    /// Runs `prepare` (cached: it returns at once when nothing changed) and takes the
    /// directory it prints.
    pub fn prepare(script: &Path) -> Result<Self, AssetsError> {
        let out = Command::new(script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|source| AssetsError::Spawn {
                script: script.to_path_buf(),
                source,
            })?;
        if !out.status.success() {
            return Err(AssetsError::Failed {
                script: script.to_path_buf(),
                status: out.status,
            });
        }
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let assets = Assets {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.cpio"),
        };
        if !assets.kernel.is_file() || !assets.initrd.is_file() {
            return Err(AssetsError::Incomplete(dir));
        }
        Ok(assets)
    }
}

/// What one emulated host boots with.
#[derive(Debug, Clone)]
pub struct HostSpec<'a> {
    pub assets: &'a Assets,
    pub memory_mib: u32,
    /// Directory for the job script, the command's output and status, and the console.
    pub io_dir: &'a Path,
    /// Shared writable at the same path inside.
    pub share: Option<&'a Path>,
}

fn virtfs(id: &str, path: &Path, read_only: bool) -> [String; 4] {
    let ro = if read_only { ",readonly=on" } else { "" };
    [
        "-fsdev".into(),
        format!(
            "local,id={id},path={},security_model=none,multidevs=remap{ro}",
            path.display()
        ),
        "-device".into(),
        format!("virtio-9p-pci,fsdev={id},mount_tag={id}"),
    ]
}

/// QEMU's arguments. TCG with several threads (single-threaded TCG hung in 7 of 9 runs),
/// an EPYC CPU (SVM with NPT and XSAVE, steady nested boot times), one vCPU (QEMU 7.2 loses
/// interrupts with two), q35 with virtio-pci: a Debian kernel on QEMU 7.2's microvm with
/// three virtio-mmio devices hangs in early boot (no PIT or HPET to calibrate the TSC).
pub fn host_args(spec: &HostSpec) -> Vec<String> {
    let mut cmdline = String::from("console=ttyS0 loglevel=4 panic=-1");
    if let Some(share) = spec.share {
        cmdline.push_str(&format!(" vpod.share={}", share.display()));
    }
    let mut args: Vec<String> = [
        "-M",
        "q35",
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "EPYC",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push("-m".into());
    args.push(spec.memory_mib.to_string());
    args.push("-serial".into());
    args.push(format!(
        "file:{}",
        spec.io_dir.join("console.log").display()
    ));
    args.push("-kernel".into());
    args.push(spec.assets.kernel.display().to_string());
    args.push("-initrd".into());
    args.push(spec.assets.initrd.display().to_string());
    args.push("-append".into());
    args.push(cmdline);
    args.extend(virtfs("hostroot", Path::new("/"), true));
    args.extend(virtfs("vpodio", spec.io_dir, false));
    if let Some(share) = spec.share {
        args.extend(virtfs("checkout", share, false));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_share_root_read_only_and_checkout_writable() {
        let assets = Assets {
            kernel: "/c/vmlinuz".into(),
            initrd: "/c/initrd.cpio".into(),
        };
        let spec = HostSpec {
            assets: &assets,
            memory_mib: 2048,
            io_dir: Path::new("/tmp/io"),
            share: Some(Path::new("/work/main")),
        };
        let args = host_args(&spec);
        let joined = args.join(" ");
        assert!(joined.contains("-accel tcg,thread=multi -cpu EPYC -smp 1"));
        assert!(joined.contains("-m 2048"));
        assert!(joined.contains("file:/tmp/io/console.log"));
        assert!(
            joined.contains("id=hostroot,path=/,security_model=none,multidevs=remap,readonly=on")
        );
        assert!(joined.contains("id=checkout,path=/work/main,security_model=none,multidevs=remap "));
        let append = args.iter().position(|a| a == "-append").unwrap();
        assert!(args[append + 1].ends_with("vpod.share=/work/main"));
    }

    #[test]
    fn no_share_means_no_checkout_device() {
        let assets = Assets {
            kernel: "k".into(),
            initrd: "i".into(),
        };
        let spec = HostSpec {
            assets: &assets,
            memory_mib: 512,
            io_dir: Path::new("/io"),
            share: None,
        };
        let joined = host_args(&spec).join(" ");
        assert!(!joined.contains("checkout"));
        assert!(!joined.contains("vpod.share"));
    }
}
