//! The wire configuration of [`vpod_proto::vmm`] turned into the VMM's own, checked the way
//! the flags are: the wire types stop here.

use std::os::fd::RawFd;

use vpod_proto::vmm as wire;

use crate::arch::layout::{MAX_MEMORY_MIB, MIN_MEMORY_MIB};
use crate::arch::mptable::MAX_VCPUS;
use crate::config::{
    fs_tag_problem, generated_mac, is_unicast, parse_mac, valid_fs_queue_size, valid_memory_mib,
    valid_vcpus, BalloonConfig, ConsoleConfig, DiskConfig, DiskSource, FsConfig, InitrdConfig,
    NetConfig, TapSource, VmConfig, VsockConfig, DEFAULT_CMDLINE, DISK_SERIAL_LEN,
    FS_DEFAULT_QUEUE_SIZE, MAX_DISK_SLOTS, MAX_FS_SHARES, MAX_TAP_NAME_LEN,
};

/// What is wrong with a wire configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error(
        "kernel parameter {0:?} must be one word: not empty, no whitespace or double quote, not --"
    )]
    KernelParam(String),
    #[error("vcpus must be from 1 to {MAX_VCPUS}, not {0}")]
    Vcpus(u8),
    #[error("memory_mib must be from {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB}, not {0}")]
    Memory(u64),
    #[error("disk_slots must be at most {MAX_DISK_SLOTS}, not {0}")]
    DiskSlots(u32),
    #[error("disk {0}: the path is empty")]
    EmptyDiskPath(usize),
    #[error("disk {0}: the serial is longer than {DISK_SERIAL_LEN} bytes")]
    SerialTooLong(usize),
    #[error("disk {0}: descriptor {1} is not open in the VMM")]
    DescriptorNotOpen(usize, u32),
    #[error("disk {0}: descriptor {1} is standard input, output or error")]
    StdioDescriptor(usize, u32),
    #[error("nic {0}: the tap name must be 1 to {MAX_TAP_NAME_LEN} bytes, not {1:?}")]
    TapName(usize, String),
    #[error("nic {0}: the mac must be six hex bytes xx:xx:xx:xx:xx:xx, not {1:?}")]
    BadMac(usize, String),
    #[error("nic {0}: the mac {1} is a multicast address")]
    MulticastMac(usize, String),
    #[error("nic {0}: descriptor {1} is not open in the VMM")]
    TapNotOpen(usize, u32),
    #[error("nic {0}: descriptor {1} is standard input, output or error")]
    TapStdio(usize, u32),
    #[error("fs {0}: the socket path is empty")]
    EmptyFsSocket(usize),
    #[error("fs {0}: {1} ({2:?})")]
    FsTag(usize, &'static str, String),
    #[error("fs {0}: the queue size must be a power of two from 2 to 1024, not {1}")]
    FsQueueSize(usize, u16),
    #[error("at most {MAX_FS_SHARES} fs shares are supported, not {0}")]
    TooManyFs(usize),
    #[error("the vsock guest_cid must be 3 or more, not {0}")]
    ReservedCid(u32),
    #[error(
        "guest argument {0:?} contains a double quote, which the kernel command line cannot carry"
    )]
    QuoteInInitArg(String),
}

/// Whether descriptor `fd` is open in this process.
fn descriptor_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD reads the descriptor's flags and touches no memory; a descriptor that
    // is not open makes it fail with EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

fn disk(index: usize, disk: wire::DiskConfig) -> Result<DiskConfig, ConvertError> {
    if disk.serial.len() > DISK_SERIAL_LEN {
        return Err(ConvertError::SerialTooLong(index));
    }
    let source = match disk.source {
        wire::DiskSource::Path(path) if path.as_os_str().is_empty() => {
            return Err(ConvertError::EmptyDiskPath(index))
        }
        wire::DiskSource::Path(path) => DiskSource::Path(path),
        wire::DiskSource::Fd(fd) if fd <= 2 => {
            return Err(ConvertError::StdioDescriptor(index, fd))
        }
        wire::DiskSource::Fd(fd) => match RawFd::try_from(fd) {
            Ok(raw) if descriptor_is_open(raw) => DiskSource::Inherited(raw),
            _ => return Err(ConvertError::DescriptorNotOpen(index, fd)),
        },
    };
    Ok(DiskConfig {
        source,
        read_only: disk.read_only,
        serial: disk.serial.into_bytes(),
    })
}

fn nic(index: usize, nic: wire::NetConfig) -> Result<NetConfig, ConvertError> {
    let tap = match nic.source {
        wire::TapSource::Name(name) if name.is_empty() || name.len() > MAX_TAP_NAME_LEN => {
            return Err(ConvertError::TapName(index, name))
        }
        wire::TapSource::Name(name) => TapSource::Name(name),
        wire::TapSource::Fd(fd) if fd <= 2 => return Err(ConvertError::TapStdio(index, fd)),
        wire::TapSource::Fd(fd) => match RawFd::try_from(fd) {
            Ok(raw) if descriptor_is_open(raw) => TapSource::Inherited(raw),
            _ => return Err(ConvertError::TapNotOpen(index, fd)),
        },
    };
    let mac = match nic.mac {
        None => generated_mac(),
        Some(text) => match parse_mac(&text) {
            Some(mac) if is_unicast(&mac) => mac,
            Some(_) => return Err(ConvertError::MulticastMac(index, text)),
            None => return Err(ConvertError::BadMac(index, text)),
        },
    };
    Ok(NetConfig { tap, mac })
}

fn fs_share(index: usize, share: wire::FsConfig) -> Result<FsConfig, ConvertError> {
    if share.socket.as_os_str().is_empty() {
        return Err(ConvertError::EmptyFsSocket(index));
    }
    if let Some(problem) = fs_tag_problem(&share.tag) {
        return Err(ConvertError::FsTag(index, problem, share.tag));
    }
    let queue_size = share.queue_size.unwrap_or(FS_DEFAULT_QUEUE_SIZE);
    if !valid_fs_queue_size(queue_size) {
        return Err(ConvertError::FsQueueSize(index, queue_size));
    }
    Ok(FsConfig {
        socket: share.socket,
        tag: share.tag,
        queue_size,
    })
}

impl TryFrom<wire::VmConfig> for VmConfig {
    type Error = ConvertError;

    fn try_from(config: wire::VmConfig) -> Result<Self, Self::Error> {
        if !valid_vcpus(config.vcpus) {
            return Err(ConvertError::Vcpus(config.vcpus));
        }
        if !valid_memory_mib(config.memory_mib) {
            return Err(ConvertError::Memory(config.memory_mib));
        }
        if config.disk_slots > MAX_DISK_SLOTS {
            return Err(ConvertError::DiskSlots(config.disk_slots));
        }
        if let Some(word) = config.init_args.iter().find(|w| w.contains('"')) {
            return Err(ConvertError::QuoteInInitArg(word.clone()));
        }
        let vsock = match config.vsock {
            Some(vsock) if vsock.guest_cid < 3 => {
                return Err(ConvertError::ReservedCid(vsock.guest_cid))
            }
            Some(vsock) => Some(VsockConfig {
                uds_path: vsock.uds_path,
                guest_cid: u64::from(vsock.guest_cid),
            }),
            None => None,
        };
        let disks = config
            .disks
            .into_iter()
            .enumerate()
            .map(|(index, d)| disk(index, d))
            .collect::<Result<_, _>>()?;
        let net = config
            .net
            .into_iter()
            .enumerate()
            .map(|(index, n)| nic(index, n))
            .collect::<Result<_, _>>()?;
        if config.fs.len() > MAX_FS_SHARES {
            return Err(ConvertError::TooManyFs(config.fs.len()));
        }
        let fs = config
            .fs
            .into_iter()
            .enumerate()
            .map(|(index, share)| fs_share(index, share))
            .collect::<Result<_, _>>()?;
        Ok(VmConfig {
            kernel: config.kernel,
            initrd: config
                .initrd
                .map_or(InitrdConfig::None, InitrdConfig::Required),
            cmdline: base_cmdline(config.cmdline, &config.kernel_params)?,
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            disks,
            console: match config.console {
                wire::Console::Stdio => ConsoleConfig::Stdio,
                wire::Console::Off => ConsoleConfig::Off,
                wire::Console::File(path) => ConsoleConfig::File(path),
            },
            timings: config.timings,
            init_args: config.init_args,
            disk_slots: config.disk_slots,
            vsock,
            net,
            fs,
            api_socket: config.api_socket,
            balloon: config.balloon.map(|b| BalloonConfig {
                free_page_reporting: b.free_page_reporting,
                deflate_on_oom: b.deflate_on_oom,
            }),
            ksm: config.ksm,
            private_boot_files: config.private_boot_files,
            initrd_pages_stay: config.initrd_pages_stay,
            cgroup: config.cgroup,
            jail: config.jail,
            seccomp: config.seccomp,
        })
    }
}

/// The base line (the given one or the default) followed by `params`, each checked to be
/// one word the kernel hands on as it is.
fn base_cmdline(base: Option<String>, params: &[String]) -> Result<String, ConvertError> {
    let mut line = base.unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
    for param in params {
        if !wire::is_kernel_param(param) {
            return Err(ConvertError::KernelParam(param.clone()));
        }
        line.push(' ');
        line.push_str(param);
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::path::PathBuf;

    fn convert(config: wire::VmConfig) -> Result<VmConfig, ConvertError> {
        VmConfig::try_from(config)
    }

    #[test]
    fn kernel_params_follow_the_base_line_one_word_each() {
        let config = convert(wire::VmConfig {
            cmdline: Some("console=ttyS0".into()),
            kernel_params: vec![
                "page_reporting.page_reporting_order=3".into(),
                "quiet".into(),
            ],
            ..wire::VmConfig::new("/k")
        })
        .expect("valid");
        assert_eq!(
            config.cmdline,
            "console=ttyS0 page_reporting.page_reporting_order=3 quiet"
        );
        let on_default = convert(wire::VmConfig {
            kernel_params: vec!["x=1".into()],
            ..wire::VmConfig::new("/k")
        })
        .expect("valid");
        assert_eq!(on_default.cmdline, format!("{DEFAULT_CMDLINE} x=1"));
        for bad in ["", "a b", "x=\"y\"", "--", "a\tb"] {
            let err = convert(wire::VmConfig {
                kernel_params: vec![bad.into()],
                ..wire::VmConfig::new("/k")
            })
            .expect_err(bad);
            assert!(
                matches!(err, ConvertError::KernelParam(ref p) if p == bad),
                "{err}"
            );
        }
    }

    #[test]
    fn a_full_wire_config_becomes_the_vmm_config() {
        let file = std::fs::File::open("/dev/null").expect("open");
        let fd = file.as_raw_fd() as u32;
        let config = convert(wire::VmConfig {
            initrd: Some("/i".into()),
            vcpus: 2,
            memory_mib: 512,
            disks: vec![
                wire::DiskConfig::path("/rw.img").serial("rw-p1"),
                wire::DiskConfig {
                    source: wire::DiskSource::Fd(fd),
                    read_only: true,
                    serial: "layer-0".into(),
                },
            ],
            disk_slots: 4,
            console: wire::Console::File("/c.log".into()),
            vsock: Some(wire::VsockConfig {
                uds_path: "/v.sock".into(),
                guest_cid: 9,
            }),
            api_socket: Some("/api.sock".into()),
            init_args: vec!["echo".into(), "hi there".into()],
            timings: true,
            balloon: Some(wire::BalloonConfig {
                free_page_reporting: false,
                deflate_on_oom: true,
            }),
            ..wire::VmConfig::new("/k")
        })
        .expect("valid");
        assert_eq!(config.kernel, PathBuf::from("/k"));
        assert_eq!(config.initrd, InitrdConfig::Required("/i".into()));
        assert_eq!(config.cmdline, DEFAULT_CMDLINE);
        assert_eq!(
            (config.vcpus, config.memory_mib, config.disk_slots),
            (2, 512, 4)
        );
        assert_eq!(
            config.disks[0],
            DiskConfig {
                source: DiskSource::Path("/rw.img".into()),
                read_only: false,
                serial: b"rw-p1".to_vec(),
            }
        );
        assert_eq!(config.disks[1].source, DiskSource::Inherited(fd as RawFd));
        assert!(config.disks[1].read_only);
        assert_eq!(config.console, ConsoleConfig::File("/c.log".into()));
        assert_eq!(config.vsock.expect("vsock").guest_cid, 9);
        assert_eq!(config.api_socket, Some(PathBuf::from("/api.sock")));
        assert!(config.timings);
        let balloon = config.balloon.expect("balloon");
        assert!(!balloon.free_page_reporting && balloon.deflate_on_oom);
        // A balloon given as {} gets free page reporting.
        let wire: wire::VmConfig =
            serde_json::from_str(r#"{"kernel":"/k","balloon":{}}"#).expect("json");
        assert_eq!(wire.balloon, Some(wire::BalloonConfig::default()));
        assert!(wire.balloon.expect("balloon").free_page_reporting);
    }

    #[test]
    fn fs_shares_are_checked_and_get_the_default_queue_size() {
        let with_fs = |fs: Vec<wire::FsConfig>| {
            convert(wire::VmConfig {
                fs,
                ..wire::VmConfig::new("/k")
            })
        };
        let config = with_fs(vec![wire::FsConfig::new("/fs.sock", "vpod")]).expect("valid");
        assert_eq!(
            config.fs,
            vec![FsConfig {
                socket: "/fs.sock".into(),
                tag: "vpod".into(),
                queue_size: FS_DEFAULT_QUEUE_SIZE,
            }]
        );
        let long = "x".repeat(37);
        for (share, error) in [
            (wire::FsConfig::new("", "t"), ConvertError::EmptyFsSocket(0)),
            (
                wire::FsConfig::new("/s", ""),
                ConvertError::FsTag(0, "the tag is empty", String::new()),
            ),
            (
                wire::FsConfig::new("/s", long.clone()),
                ConvertError::FsTag(0, "the tag is longer than 36 bytes", long.clone()),
            ),
            (
                wire::FsConfig {
                    queue_size: Some(3),
                    ..wire::FsConfig::new("/s", "t")
                },
                ConvertError::FsQueueSize(0, 3),
            ),
        ] {
            assert_eq!(with_fs(vec![share]), Err(error));
        }
        let five = vec![wire::FsConfig::new("/s", "t"); 5];
        assert_eq!(with_fs(five), Err(ConvertError::TooManyFs(5)));
    }

    #[test]
    fn a_minimal_wire_config_has_no_initrd_and_the_default_command_line() {
        let config = convert(wire::VmConfig::new("/k")).expect("valid");
        assert_eq!(config.initrd, InitrdConfig::None);
        assert_eq!((config.vcpus, config.memory_mib), (1, 128));
        assert_eq!(config.console, ConsoleConfig::Stdio);
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let base = || wire::VmConfig::new("/k");
        let with_disk = |disk: wire::DiskConfig| wire::VmConfig {
            disks: vec![wire::DiskConfig::path("/ok.img"), disk],
            ..base()
        };
        let cases = [
            (
                wire::VmConfig { vcpus: 0, ..base() },
                ConvertError::Vcpus(0),
            ),
            (
                wire::VmConfig {
                    vcpus: 33,
                    ..base()
                },
                ConvertError::Vcpus(33),
            ),
            (
                wire::VmConfig {
                    memory_mib: 1,
                    ..base()
                },
                ConvertError::Memory(1),
            ),
            (
                wire::VmConfig {
                    disk_slots: 17,
                    ..base()
                },
                ConvertError::DiskSlots(17),
            ),
            (
                with_disk(wire::DiskConfig::path("/a").serial("x".repeat(21))),
                ConvertError::SerialTooLong(1),
            ),
            (
                with_disk(wire::DiskConfig::path("")),
                ConvertError::EmptyDiskPath(1),
            ),
            (
                with_disk(wire::DiskConfig {
                    source: wire::DiskSource::Fd(1),
                    read_only: false,
                    serial: String::new(),
                }),
                ConvertError::StdioDescriptor(1, 1),
            ),
            (
                with_disk(wire::DiskConfig {
                    source: wire::DiskSource::Fd(987_654),
                    read_only: false,
                    serial: String::new(),
                }),
                ConvertError::DescriptorNotOpen(1, 987_654),
            ),
            (
                wire::VmConfig {
                    vsock: Some(wire::VsockConfig {
                        uds_path: "/v".into(),
                        guest_cid: 2,
                    }),
                    ..base()
                },
                ConvertError::ReservedCid(2),
            ),
            (
                wire::VmConfig {
                    init_args: vec!["say \"hi\"".into()],
                    ..base()
                },
                ConvertError::QuoteInInitArg("say \"hi\"".into()),
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(convert(config), Err(expected));
        }
    }

    #[test]
    fn nics_become_taps_with_their_mac_or_a_generated_one() {
        let file = std::fs::File::open("/dev/null").expect("open");
        let fd = file.as_raw_fd() as u32;
        let config = convert(wire::VmConfig {
            net: vec![
                wire::NetConfig::tap("tap0").mac("02:00:00:0A:0b:01"),
                wire::NetConfig {
                    source: wire::TapSource::Fd(fd),
                    mac: None,
                },
            ],
            ..wire::VmConfig::new("/k")
        })
        .expect("valid");
        assert_eq!(config.net[0].tap, TapSource::Name("tap0".into()));
        assert_eq!(config.net[0].mac, [2, 0, 0, 0x0a, 0x0b, 1]);
        assert_eq!(config.net[1].tap, TapSource::Inherited(fd as RawFd));
        assert_eq!(config.net[1].mac[0] & 0b11, 0b10);
    }

    #[test]
    fn bad_nics_are_refused_with_a_lowercase_reason() {
        let with_nic = |nic: wire::NetConfig| wire::VmConfig {
            net: vec![wire::NetConfig::tap("ok"), nic],
            ..wire::VmConfig::new("/k")
        };
        let cases = [
            (
                wire::NetConfig::tap("ok").mac("02:00:00:00:00"),
                ConvertError::BadMac(1, "02:00:00:00:00".into()),
            ),
            (
                wire::NetConfig::tap("ok").mac("02-00-00-00-00-01"),
                ConvertError::BadMac(1, "02-00-00-00-00-01".into()),
            ),
            (
                wire::NetConfig::tap("ok").mac("ff:ff:ff:ff:ff:ff"),
                ConvertError::MulticastMac(1, "ff:ff:ff:ff:ff:ff".into()),
            ),
            (
                wire::NetConfig::tap("a-name-far-too-long"),
                ConvertError::TapName(1, "a-name-far-too-long".into()),
            ),
            (
                wire::NetConfig {
                    source: wire::TapSource::Fd(2),
                    mac: None,
                },
                ConvertError::TapStdio(1, 2),
            ),
            (
                wire::NetConfig {
                    source: wire::TapSource::Fd(987_654),
                    mac: None,
                },
                ConvertError::TapNotOpen(1, 987_654),
            ),
        ];
        for (nic, expected) in cases {
            let error = convert(with_nic(nic)).expect_err("refused");
            let text = error.to_string();
            assert_eq!(error, expected);
            assert!(!text.ends_with('.'), "{text}");
            assert!(text.starts_with("nic 1: "), "{text}");
        }
    }
}
