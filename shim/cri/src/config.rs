//! `/etc/vpod/config.toml`: where the guest kernel, initrd and VMM are, and how big pods are.
//!
//! ```toml
//! socket = "/run/vpod/cri.sock"
//! root = "/var/lib/vpod"
//! kernel = "/usr/share/vpod/vmlinux"
//! initrd = "/usr/share/vpod/pod-initrd.img"
//! vmm = "/usr/bin/vpod-vmm"
//!
//! [pod]
//! default_vcpus = 1
//! default_memory_mib = 256
//! guest_overhead_mib = 64
//! min_memory_mib = 128
//! max_vcpus = 8
//! max_memory_mib = 16384
//! layer_slots = 8
//! writable_disk_mib = 1024
//! agent_timeout_secs = 60
//! max_concurrent_boots = 0   # 0: the host's CPU count
//! volumes = true              # each pod gets a shared directory (a virtiofsd) for mounts
//! virtiofsd = "/usr/lib/qemu/virtiofsd"
//! ksm = false                 # guest RAM offered to KSM (trusted tenants only; volumes = false)
//! share_boot_files = true     # after boot, guest pages of the kernel code and initrd shared
//! kernel_params = []          # added to the guest kernel's command line, one word each
//! empty_dir_disks = false     # plain emptyDirs on disks of their own (an image in the dir)
//! empty_dir_disk_mib = 10240  # each such disk's size (sparse: it costs what is stored)
//! jail = true                 # each VMM jailed: namespaces, own root, own uid, seccomp
//! jail_first_uid = 2000000000 # the VMMs' uids: one per pod from this range (reserve it)
//! jail_uid_count = 100000000
//!
//! [network]
//! conf_dir = "/etc/cni/net.d"             # the first configuration here is the pods' network
//! bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]
//! netns_dir = "/var/run/netns"            # pods' namespaces: vpod-<pod id>
//! plugin_timeout_secs = 30
//!
//! [registry]
//! insecure_registries = ["registry.lan:5000"]   # plain HTTP (loopback needs no entry)
//! extra_ca_files = ["/etc/vpod/registry-ca.pem"]
//! max_concurrent_downloads = 3            # layers of one pull fetched and converted at once
//! max_layer_entries = 500000              # a layer with more tar entries is refused
//! max_layer_mib = 65536                   # a layer whose uncompressed tar is larger is refused
//!
//! [streaming]
//! address = "127.0.0.1:0"                 # Exec/Attach/PortForward URLs; port 0: a free one
//! # tls_cert = "/etc/vpod/stream.pem"     # both or neither: HTTPS with this PEM chain
//! # tls_key = "/etc/vpod/stream-key.pem"  # and key (PKCS#8, PKCS#1 or SEC1), read at start
//! token_ttl_secs = 60                     # how long a URL waits for its client
//! max_in_flight = 1000                    # URLs waiting for their client at most
//! idle_timeout_secs = 14400               # a session with no traffic is closed after this
//! stream_creation_timeout_secs = 30       # a SPDY client's time to open its streams
//! ```
//!
//! Every key is optional. Absent paths are found next to the `vpod-cri` binary (`vpod-vmm`)
//! and in the checkout or install that holds it (`build/vmlinux`, `build/pod-initrd.img`, or
//! `$VPOD_HOME/build/...`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read the configuration file {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("the configuration file {0} is not valid")]
    Parse(PathBuf, #[source] Box<toml::de::Error>),
    #[error("the configuration is inconsistent: {0}")]
    Invalid(String),
}

pub const DEFAULT_CONFIG: &str = "/etc/vpod/config.toml";
pub const DEFAULT_SOCKET: &str = "/run/vpod/cri.sock";
pub const DEFAULT_ROOT: &str = "/var/lib/vpod";

/// The daemon's settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub socket: PathBuf,
    pub root: PathBuf,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub vmm: Option<PathBuf>,
    pub pod: PodSizing,
    pub network: NetworkConfig,
    pub registry: RegistryConfig,
    pub streaming: StreamingConfig,
}

/// The streaming server that Exec, Attach and PortForward hand out URLs on (as containerd's
/// `stream_server_address` and friends); defaults are the kubelet's streaming server's.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// Where to listen; port 0 picks a free one. Clients reach it from the kubelet's host,
    /// so anything but loopback without TLS exposes exec to the network in the clear.
    pub address: SocketAddr,
    /// PEM certificate chain (the server's certificate first) for HTTPS; set with
    /// `tls_key` or not at all. The files are read when the daemon starts.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub tls_key: Option<PathBuf>,
    /// How long a URL's single-use token waits for its client.
    pub token_ttl_secs: u64,
    /// Tokens waiting for their client at most; more requests are ResourceExhausted.
    pub max_in_flight: usize,
    /// A session with no traffic either way for this long is closed.
    pub idle_timeout_secs: u64,
    /// How long a SPDY client has to open its streams.
    pub stream_creation_timeout_secs: u64,
}

impl Default for StreamingConfig {
    fn default() -> StreamingConfig {
        let defaults = vpod_streaming::Config::default();
        StreamingConfig {
            address: defaults.addr,
            tls_cert: None,
            tls_key: None,
            token_ttl_secs: defaults.token_ttl.as_secs(),
            max_in_flight: defaults.max_in_flight,
            idle_timeout_secs: defaults.idle_timeout.as_secs(),
            stream_creation_timeout_secs: defaults.stream_creation_timeout.as_secs(),
        }
    }
}

impl StreamingConfig {
    /// The streaming server's settings (validated: TLS has both files or neither).
    pub fn server_config(&self) -> vpod_streaming::Config {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(vpod_streaming::TlsConfig {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        vpod_streaming::Config {
            addr: self.address,
            tls,
            token_ttl: Duration::from_secs(self.token_ttl_secs),
            max_in_flight: self.max_in_flight,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            stream_creation_timeout: Duration::from_secs(self.stream_creation_timeout_secs),
            ..vpod_streaming::Config::default()
        }
    }
}

/// Where the pods' network comes from: CNI plugins and their configuration, as on any node.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// The first configuration here (by file name: `*.conflist`, `*.conf`, `*.json`) is the
    /// pods' network; none: pods have no network and Status says NetworkReady false.
    pub conf_dir: PathBuf,
    /// Where plugin binaries are looked for, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// Where each pod's network namespace is bind-mounted (`vpod-<pod id>`).
    pub netns_dir: PathBuf,
    /// How long one plugin may run.
    pub plugin_timeout_secs: u64,
}

impl Default for NetworkConfig {
    fn default() -> NetworkConfig {
        NetworkConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            netns_dir: PathBuf::from("/var/run/netns"),
            plugin_timeout_secs: 30,
        }
    }
}

/// How registries are reached.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// `host[:port]` of registries spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// PEM files of CA certificates trusted besides the system's.
    pub extra_ca_files: Vec<PathBuf>,
    /// Registry `host[:port]` to the `host[:port]` its images are pulled from instead (an
    /// air-gapped node's local copy); images keep the names they were asked for.
    pub mirrors: std::collections::HashMap<String, String>,
    /// Layers of one pull fetched and converted (as they stream) at the same time; absent:
    /// the image crate's default (3).
    pub max_concurrent_downloads: Option<usize>,
    /// A layer with more tar entries is refused; absent: the image crate's default
    /// (500,000). The converter keeps each entry's metadata in memory until the end.
    pub max_layer_entries: Option<u64>,
    /// A layer whose uncompressed tar is larger is refused (a decompression bomb stops
    /// there); absent: the image crate's default (64 GiB).
    pub max_layer_mib: Option<u64>,
}

/// How pod VMs are sized (see [`crate::sizing`]).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PodSizing {
    /// vCPUs of a pod whose containers set no CPU limit.
    pub default_vcpus: u8,
    /// Guest memory of a pod whose containers set no memory limit.
    pub default_memory_mib: u64,
    /// Added to the containers' memory limits: the guest kernel, vpod-init, page cache.
    pub guest_overhead_mib: u64,
    pub min_memory_mib: u64,
    pub max_vcpus: u8,
    pub max_memory_mib: u64,
    /// Disk slots for image layers and raw block volumes (at most 16).
    pub layer_slots: u32,
    /// The writable disk holding every container's upper directory.
    pub writable_disk_mib: u64,
    /// From starting the VMM until the agent answers.
    pub agent_timeout_secs: u64,
    /// Pods booting at the same time; more RunPodSandbox calls wait their turn. 0: the
    /// host's CPU count.
    pub max_concurrent_boots: usize,
    /// Give every pod a shared directory (a virtiofsd of its own, guest memory in a shared
    /// memfd) through which CRI mounts, directories included, reach its containers. Off:
    /// no virtiofsd, small regular files are copied in and directory mounts are refused.
    pub volumes: bool,
    /// The virtiofsd binary (QEMU's C virtiofsd options); Debian's path when unset.
    pub virtiofsd: Option<PathBuf>,
    /// Offer each pod's guest RAM to KSM, so the host's ksmd (once started: `echo 1 >
    /// /sys/kernel/mm/ksm/run`) merges identical pages across pods. Off by default: merged
    /// pages are a timing side channel between tenants (a write to a shared page is slower),
    /// so only for nodes whose pods trust one another. Needs `volumes = false`: KSM merges
    /// private memory only, and a pod with a share has its RAM in a shared memfd.
    pub ksm: bool,
    /// Once each pod's guest has booted, map the kernel and initrd files copy-on-write over
    /// the guest pages that still hold their bytes (the kernel's code; with `volumes =
    /// false`, also the agent unpacked in the tmpfs root), so all pods share those host
    /// pages (about 7 MiB less per pod with volumes).
    /// On by default; off keeps each pod's private copies, for nodes that treat the
    /// flush+reload timing channel on shared pages between tenants as out of bounds.
    pub share_boot_files: bool,
    /// Parameters added to every pod's guest kernel command line, one word each
    /// (`["page_reporting.page_reporting_order=9"]`); one the VMM would set itself (the
    /// free page reporting order) is then left as given here.
    pub kernel_params: Vec<String>,
    /// Keep each plain emptyDir (medium "", not a tmpfs) on a disk of its own: a sparse
    /// ext4 image in the emptyDir's host directory, mounted in the guest. Small-file work
    /// is many times faster than through the share, and the kubelet's `du` of the
    /// directory still counts what the pod stores; the host no longer sees the files. Off
    /// by default: the kubelet prepares a `subPath` of an emptyDir on the host directory,
    /// which such a volume no longer uses, so a container asking for one after the disk
    /// was made is refused. Off: emptyDirs go through the share like every other directory.
    pub empty_dir_disks: bool,
    /// The size of each emptyDir's disk (sparse, so an upper bound, not a cost).
    pub empty_dir_disk_mib: u64,
    /// Each pod's VMM confines itself: its own PID, mount, IPC and UTS namespaces, a root
    /// holding only its files, an unprivileged uid of its own, no capabilities, seccomp.
    /// Off for development only.
    pub jail: bool,
    /// The host uids the jailed VMMs run as, one per pod, `jail_first_uid` onwards
    /// (`jail_uid_count` of them); reserve the range on the host.
    pub jail_first_uid: u32,
    pub jail_uid_count: u32,
}

impl Default for PodSizing {
    fn default() -> PodSizing {
        PodSizing {
            default_vcpus: 1,
            default_memory_mib: 256,
            guest_overhead_mib: 64,
            min_memory_mib: 128,
            max_vcpus: 8,
            max_memory_mib: 16 * 1024,
            layer_slots: 8,
            writable_disk_mib: 1024,
            agent_timeout_secs: 60,
            max_concurrent_boots: 0,
            volumes: true,
            virtiofsd: None,
            ksm: false,
            share_boot_files: true,
            kernel_params: Vec::new(),
            empty_dir_disks: false,
            empty_dir_disk_mib: 10 * 1024,
            jail: true,
            jail_first_uid: vpod_sandbox::jail::DEFAULT_FIRST_UID,
            jail_uid_count: vpod_sandbox::jail::DEFAULT_UID_COUNT,
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            socket: PathBuf::from(DEFAULT_SOCKET),
            root: PathBuf::from(DEFAULT_ROOT),
            kernel: None,
            initrd: None,
            vmm: None,
            pod: PodSizing::default(),
            network: NetworkConfig::default(),
            registry: RegistryConfig::default(),
            streaming: StreamingConfig::default(),
        }
    }
}

impl Config {
    /// Reads `path`; a missing file gives the defaults when `optional`.
    pub fn load(path: &Path, optional: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default())
            }
            Err(e) => return Err(ConfigError::Read(path.to_owned(), e)),
        };
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse(_, source) => ConfigError::Parse(path.to_owned(), source),
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse(PathBuf::new(), Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let pod = &self.pod;
        let bad = |what: &str| Err(ConfigError::Invalid(what.to_string()));
        if pod.default_vcpus == 0 || pod.max_vcpus == 0 || pod.default_vcpus > pod.max_vcpus {
            return bad("pod.default_vcpus must be between 1 and pod.max_vcpus");
        }
        if pod.min_memory_mib == 0 || pod.min_memory_mib > pod.max_memory_mib {
            return bad("pod.min_memory_mib must be between 1 and pod.max_memory_mib");
        }
        if pod.default_memory_mib < pod.min_memory_mib
            || pod.default_memory_mib > pod.max_memory_mib
        {
            return bad("pod.default_memory_mib must be between min and max_memory_mib");
        }
        if pod.layer_slots == 0 || pod.layer_slots > 16 {
            return bad("pod.layer_slots must be between 1 and 16");
        }
        if pod.writable_disk_mib < 16 {
            return bad("pod.writable_disk_mib must be at least 16");
        }
        if pod.empty_dir_disks && pod.empty_dir_disk_mib < 16 {
            return bad("pod.empty_dir_disk_mib must be at least 16");
        }
        if pod.jail && (pod.jail_first_uid == 0 || pod.jail_uid_count == 0) {
            return bad(
                "pod.jail_first_uid and pod.jail_uid_count must be at least 1 (uid 0 is root)",
            );
        }
        if u64::from(pod.jail_first_uid) + u64::from(pod.jail_uid_count) > u64::from(u32::MAX) {
            return bad("pod.jail_first_uid + pod.jail_uid_count must stay below 2^32 - 1");
        }
        if let Some(param) = pod
            .kernel_params
            .iter()
            .find(|p| !vpod_proto::vmm::is_kernel_param(p))
        {
            return Err(ConfigError::Invalid(format!(
                "pod.kernel_params: {param:?} is not one word (no whitespace or double quote, not --)"
            )));
        }
        if pod.ksm && pod.volumes {
            return bad(
                "pod.ksm needs pod.volumes = false: a pod with a share has its guest RAM in a shared memfd, which KSM does not merge",
            );
        }
        if self.network.plugin_timeout_secs == 0 {
            return bad("network.plugin_timeout_secs must be at least 1");
        }
        let streaming = &self.streaming;
        match (&streaming.tls_cert, &streaming.tls_key) {
            (Some(_), None) => {
                return bad("streaming.tls_cert is set without streaming.tls_key (set both)")
            }
            (None, Some(_)) => {
                return bad("streaming.tls_key is set without streaming.tls_cert (set both)")
            }
            _ => {}
        }
        if streaming.token_ttl_secs == 0
            || streaming.max_in_flight == 0
            || streaming.idle_timeout_secs == 0
            || streaming.stream_creation_timeout_secs == 0
        {
            return bad("streaming timeouts and max_in_flight must be at least 1");
        }
        Ok(())
    }

    /// The kernel, initrd and VMM: configured, else found beside this installation.
    pub fn assets(&self) -> Assets {
        let home = vpod_sandbox::vpod_home();
        let vmm = self.vmm.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .map(|exe| exe.with_file_name("vpod-vmm"))
                .unwrap_or_else(|_| PathBuf::from("vpod-vmm"))
        });
        Assets {
            kernel: self
                .kernel
                .clone()
                .unwrap_or_else(|| home.join("build/vmlinux")),
            initrd: self
                .initrd
                .clone()
                .unwrap_or_else(|| home.join("build/pod-initrd.img")),
            vmm,
        }
    }
}

/// The files every pod VM boots from.
#[derive(Debug, Clone)]
pub struct Assets {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vmm: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_the_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn empty_dir_disks_are_off_by_default_and_sized_sensibly() {
        let c = Config::default();
        assert!(!c.pod.empty_dir_disks);
        assert_eq!(c.pod.empty_dir_disk_mib, 10 * 1024);
        let c = Config::parse("[pod]\nempty_dir_disks = true\n").unwrap();
        assert!(c.pod.empty_dir_disks);
        let error = Config::parse("[pod]\nempty_dir_disks = true\nempty_dir_disk_mib = 8\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("empty_dir_disk_mib"), "{error}");
    }

    #[test]
    fn boot_files_are_shared_by_default_and_can_be_private() {
        assert!(Config::default().pod.share_boot_files);
        let c = Config::parse("[pod]\nshare_boot_files = false\n").unwrap();
        assert!(!c.pod.share_boot_files);
    }

    #[test]
    fn kernel_params_are_single_words() {
        assert!(Config::default().pod.kernel_params.is_empty());
        let c = Config::parse("[pod]\nkernel_params = [\"a=1\", \"quiet\"]\n").unwrap();
        assert_eq!(c.pod.kernel_params, ["a=1", "quiet"]);
        for bad in ["\"a b\"", "\"--\"", "\"\""] {
            let text = format!("[pod]\nkernel_params = [{bad}]\n");
            match Config::parse(&text) {
                Err(ConfigError::Invalid(m)) => assert!(m.contains("kernel_params"), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn ksm_is_off_by_default_and_needs_pods_without_a_share() {
        assert!(!Config::default().pod.ksm);
        let c = Config::parse(
            "[pod]
ksm = true
volumes = false
",
        )
        .unwrap();
        assert!(c.pod.ksm);
        let error = Config::parse(
            "[pod]
ksm = true
",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("pod.ksm needs pod.volumes = false"),
            "{error}"
        );
        let c = Config::parse(
            "[registry]
max_concurrent_downloads = 6
",
        )
        .unwrap();
        assert_eq!(c.registry.max_concurrent_downloads, Some(6));
    }

    #[test]
    fn keys_override_defaults() {
        let c = Config::parse(
            "root = \"/srv/vpod\"\nkernel = \"/k\"\n[pod]\ndefault_memory_mib = 512\n\
             [registry]\ninsecure_registries = [\"127.0.0.1:5000\"]\n",
        )
        .unwrap();
        assert_eq!(c.registry.insecure_registries, vec!["127.0.0.1:5000"]);
        assert_eq!(c.root, PathBuf::from("/srv/vpod"));
        assert_eq!(c.kernel, Some(PathBuf::from("/k")));
        assert_eq!(c.pod.default_memory_mib, 512);
        assert_eq!(c.pod.default_vcpus, 1);
        assert_eq!(c.assets().kernel, PathBuf::from("/k"));
        assert_eq!(c.network, NetworkConfig::default());
        let c =
            Config::parse("[network]\nconf_dir = \"/t/net.d\"\nbin_dirs = [\"/t/bin\"]\n").unwrap();
        assert_eq!(c.network.conf_dir, PathBuf::from("/t/net.d"));
        assert_eq!(c.network.bin_dirs, [PathBuf::from("/t/bin")]);
        assert_eq!(c.network.netns_dir, PathBuf::from("/var/run/netns"));
    }

    #[test]
    fn unknown_keys_and_bad_sizes_are_refused() {
        assert!(matches!(
            Config::parse("colour = 1"),
            Err(ConfigError::Parse(..))
        ));
        assert!(matches!(
            Config::parse("[pod]\ndefault_vcpus = 0"),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            Config::parse("[pod]\nlayer_slots = 17"),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn the_streaming_table_sets_the_server_and_tls_needs_both_files() {
        let c = Config::parse("[streaming]\naddress = \"127.0.0.1:10010\"\ntoken_ttl_secs = 5\n")
            .unwrap();
        let server = c.streaming.server_config();
        assert_eq!(server.addr, "127.0.0.1:10010".parse().unwrap());
        assert_eq!(server.token_ttl, Duration::from_secs(5));
        assert_eq!(server.max_in_flight, 1000);
        assert!(server.tls.is_none());
        let defaults = Config::default().streaming.server_config();
        assert_eq!(defaults.addr, "127.0.0.1:0".parse().unwrap());
        let c =
            Config::parse("[streaming]\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n").unwrap();
        let tls = c.streaming.server_config().tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("/c.pem"));
        assert_eq!(tls.key, PathBuf::from("/k.pem"));
        match Config::parse("[streaming]\ntls_cert = \"/c.pem\"\n") {
            Err(ConfigError::Invalid(m)) => {
                assert!(m.starts_with("streaming.tls_cert is set without"), "{m}")
            }
            other => panic!("a certificate without a key was accepted: {other:?}"),
        }
        match Config::parse("[streaming]\ntls_key = \"/k.pem\"\n") {
            Err(ConfigError::Invalid(m)) => {
                assert!(m.starts_with("streaming.tls_key is set without"), "{m}")
            }
            other => panic!("a key without a certificate was accepted: {other:?}"),
        }
        assert!(matches!(
            Config::parse("[streaming]\naddress = \"nowhere\""),
            Err(ConfigError::Parse(..))
        ));
    }

    #[test]
    fn a_missing_optional_file_is_the_defaults() {
        let c = Config::load(Path::new("/nonexistent/vpod.toml"), true).unwrap();
        assert_eq!(c, Config::default());
        assert!(Config::load(Path::new("/nonexistent/vpod.toml"), false).is_err());
    }
}
