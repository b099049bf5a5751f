//! `vpod-network`: a pod's network on the host, for a runtime that runs each pod in a
//! micro-VM.
//!
//! For each pod, [`Cni::setup`]:
//! 1. loads the first network configuration of the conf dir ([`config`]) and finds every
//!    plugin binary before touching anything;
//! 2. writes the pod's record (the intent) to the cache ([`cache`]);
//! 3. creates the named netns `<netns_dir>/vpod-<sandbox_id>` ([`netns`]) and the tap
//!    `tap0_vpod` in it ([`tap`]);
//! 4. runs each plugin's ADD in order ([`exec`], [`args`]), recording progress and each
//!    result ([`result`]);
//! 5. joins the tap to `eth0` with tc redirects ([`tap`]), and returns its fd with what
//!    the guest NIC must copy from `eth0`.
//!
//! [`Cni::prepare`] (steps 1 to 3) and [`Cni::complete`] (4 and 5) split it for a caller
//! that starts the VM on the tap while the plugins run.
//!
//! If any step fails, what was done is undone before the error returns. [`Cni::teardown`]
//! undoes a pod from its record alone: DEL in reverse for each plugin whose ADD started,
//! then the netns, then the record; it works after a crash at any point and twice.
//!
//! The API is blocking: callers on an async runtime run it in `spawn_blocking`. Namespace
//! changes happen only on dedicated threads this crate spawns. Calls for different pods
//! may run at once; a second `setup` of one pod is refused ([`NetworkError::AlreadySetUp`])
//! until its `teardown`, and a caller serialises `setup` and `teardown` of one pod.
//!
//! ```no_run
//! use vpod_network::{Cni, CniSettings, PodNetworkRequest};
//!
//! let cni = Cni::new(CniSettings::with_cache_dir("/var/lib/vpod/network".into()));
//! if let Err(not_ready) = cni.status() {
//!     eprintln!("NetworkReady=false: {not_ready}");
//! }
//! let request = PodNetworkRequest {
//!     sandbox_id: "0123abcd".into(),
//!     pod_name: "web".into(),
//!     pod_namespace: "default".into(),
//!     pod_uid: "5f1c".into(),
//!     ..Default::default()
//! };
//! let pod = cni.setup(&request)?;
//! // Hand `pod.tap` to the VMM; the guest NIC takes `pod.mac`, `pod.mtu`,
//! // `pod.addresses`, `pod.routes` and `pod.dns`.
//! drop(pod.tap);
//! cni.teardown(&request.sandbox_id)?;
//! # Ok::<(), vpod_network::NetworkError>(())
//! ```
//!
//! Routes: [`PodNetwork::routes`] are read back from the pod netns after ADD (the routes
//! the plugins installed through `eth0`, without the kernel's prefix routes), which is
//! what the guest must install to route as `eth0` does; the CNI result's own `routes`
//! stay in [`PodNetwork::result`]. (The bridge plugin adds a default route, to the result
//! and the netns, only with `isDefaultGateway`; host-local adds its configured `routes`.)

pub mod args;
pub mod cache;
pub mod config;
pub mod exec;
pub mod netns;
pub mod result;
pub mod rtnl;
pub mod tap;

use cache::{CacheError, PodRecord};
use config::{ConfigError, NetworkConfigList};
use exec::{CniCommand, ExecError, Invocation};
use netns::NetnsError;
use result::{CniResult, Dns, ResultError};
use serde_json::Value;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tap::TapError;

/// The interface the plugins create inside the pod.
pub const POD_IFNAME: &str = "eth0";
/// The tap joined to it, inside the pod netns.
pub const TAP_NAME: &str = "tap0_vpod";

/// Where the configuration, the plugins, the cache and the netns files are.
#[derive(Debug, Clone)]
pub struct CniSettings {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    /// The pod records, e.g. `<state_dir>/network`.
    pub cache_dir: PathBuf,
    pub netns_dir: PathBuf,
    /// How long one plugin may run.
    pub plugin_timeout: Duration,
}

impl CniSettings {
    /// containerd's defaults with Debian's plugin dir, the cache under `cache_dir`.
    pub fn with_cache_dir(cache_dir: PathBuf) -> Self {
        CniSettings {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            cache_dir,
            netns_dir: "/var/run/netns".into(),
            plugin_timeout: Duration::from_secs(60),
        }
    }
}

/// One pod, as the CNI plugins are told of it.
#[derive(Debug, Clone, Default)]
pub struct PodNetworkRequest {
    pub sandbox_id: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    pub port_mappings: Vec<PortMapping>,
    pub dns: Option<DnsCapability>,
}

/// A host port forwarded to the pod (the `portMappings` capability).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
    pub host_ip: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// The pod's DNS settings (the `dns` capability).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsCapability {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// A pod's network half made ([`Cni::prepare`]): its netns and the tap in it exist; the
/// plugins have not run. Hand a copy of `tap` to the VMM, then finish with
/// [`Cni::complete`]; dropping it instead leaves the record for [`Cni::teardown`].
#[derive(Debug)]
pub struct PreparedNetwork {
    pub netns: PathBuf,
    /// As [`PodNetwork::tap`], not yet joined to the pod interface.
    pub tap: OwnedFd,
    pub tap_name: String,
    record: PodRecord,
    network: NetworkConfigList,
    plugin_paths: Vec<PathBuf>,
}

/// A pod's network, ready for its VM.
#[derive(Debug)]
pub struct PodNetwork {
    pub netns: PathBuf,
    /// The tap's fd, for the VMM (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`; the tap goes away
    /// when the last fd on it closes).
    pub tap: OwnedFd,
    pub tap_name: String,
    /// `eth0`'s MAC, `aa:bb:cc:dd:ee:ff`: the guest NIC's.
    pub mac: String,
    pub mtu: u32,
    pub addresses: Vec<GuestAddress>,
    pub routes: Vec<GuestRoute>,
    pub dns: Dns,
    pub result: CniResult,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestAddress {
    pub address: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRoute {
    pub destination: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
}

/// Why the network is not ready (the CRI's `NetworkReady` condition's reason).
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct NotReady {
    pub reason: String,
}

/// Why a pod's network could not be set up or torn down.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("the sandbox id {0:?} is not a plain name of [A-Za-z0-9_.-]")]
    InvalidSandboxId(String),
    #[error("sandbox {0} already has a network; tear it down first")]
    AlreadySetUp(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Plugin(#[from] ExecError),
    #[error("cni plugin {plugin} returned an unusable result")]
    Result {
        plugin: String,
        #[source]
        source: ResultError,
    },
    #[error("the cni result has no interface {0:?} inside the pod")]
    NoPodInterface(String),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("{error}; undoing it failed too: {undo}")]
    UndoFailed {
        error: Box<NetworkError>,
        undo: Box<NetworkError>,
    },
}

/// The pod networks of one runtime.
#[derive(Debug, Clone)]
pub struct Cni {
    settings: CniSettings,
}

impl Cni {
    pub fn new(settings: CniSettings) -> Self {
        Cni { settings }
    }

    pub fn settings(&self) -> &CniSettings {
        &self.settings
    }

    /// Ready when a network configuration loads and all its plugins are installed.
    pub fn status(&self) -> Result<(), NotReady> {
        self.load_network().map(drop).map_err(|e| NotReady {
            reason: e.to_string(),
        })
    }

    /// The netns file of a pod.
    pub fn netns_path(&self, sandbox_id: &str) -> PathBuf {
        self.settings.netns_dir.join(format!("vpod-{sandbox_id}"))
    }

    /// Sets up a pod's network: netns, CNI ADD, the tap. Nothing is left behind on error.
    pub fn setup(&self, request: &PodNetworkRequest) -> Result<PodNetwork, NetworkError> {
        let prepared = self.prepare(request)?;
        self.complete(prepared)
    }

    /// The first half of [`Cni::setup`], for a caller that boots the VM while the plugins
    /// run: the record, the netns and the tap in it (down, joined to nothing). Nothing is
    /// left behind on error.
    pub fn prepare(&self, request: &PodNetworkRequest) -> Result<PreparedNetwork, NetworkError> {
        let id = &request.sandbox_id;
        check_sandbox_id(id)?;
        let (network, plugin_paths) = self.load_network()?;
        let record = PodRecord {
            sandbox_id: id.clone(),
            netns: self.netns_path(id),
            ifname: POD_IFNAME.to_owned(),
            network: network.to_json(),
            cni_args: args::cni_args(request),
            capability_args: args::capability_args(request),
            started: 0,
            result: None,
            complete: false,
        };
        if !cache::create(&self.settings.cache_dir, &record)? {
            return Err(NetworkError::AlreadySetUp(id.clone()));
        }
        let made = netns::create(&record.netns)
            .map_err(NetworkError::from)
            .and_then(|()| Ok(tap::create(&record.netns, TAP_NAME)?));
        match made {
            Ok(tap) => Ok(PreparedNetwork {
                netns: record.netns.clone(),
                tap,
                tap_name: TAP_NAME.to_owned(),
                record,
                network,
                plugin_paths,
            }),
            Err(error) => Err(self.undo_after(error, &record)),
        }
    }

    /// The second half of [`Cni::setup`]: each plugin's ADD, then the tap joined to the
    /// pod interface. On error everything [`Cni::prepare`] made is undone too.
    pub fn complete(&self, prepared: PreparedNetwork) -> Result<PodNetwork, NetworkError> {
        let PreparedNetwork {
            mut record,
            network,
            plugin_paths,
            tap,
            ..
        } = prepared;
        match self.add(&mut record, &network, &plugin_paths, tap) {
            Ok(pod_network) => Ok(pod_network),
            Err(error) => Err(self.undo_after(error, &record)),
        }
    }

    /// Undoes a failed setup; the error, or both errors if undoing failed too.
    fn undo_after(&self, error: NetworkError, record: &PodRecord) -> NetworkError {
        match self.undo(record) {
            Ok(()) => error,
            Err(undo) => NetworkError::UndoFailed {
                error: Box::new(error),
                undo: Box::new(undo),
            },
        }
    }

    /// Tears a pod's network down from its record (complete, partial or absent): DEL for
    /// each plugin whose ADD started, in reverse, then the netns and the record. Running it
    /// again is a no-op.
    pub fn teardown(&self, sandbox_id: &str) -> Result<(), NetworkError> {
        check_sandbox_id(sandbox_id)?;
        match cache::read(&self.settings.cache_dir, sandbox_id)? {
            Some(record) => self.undo(&record),
            None => Ok(netns::remove(&self.netns_path(sandbox_id))?),
        }
    }

    /// The pod's addresses from its record, once its setup completed.
    pub fn pod_ips(&self, sandbox_id: &str) -> Option<Vec<IpAddr>> {
        check_sandbox_id(sandbox_id).ok()?;
        let record = cache::read(&self.settings.cache_dir, sandbox_id).ok()??;
        if !record.complete {
            return None;
        }
        let result = serde_json::to_vec(record.result.as_ref()?).ok()?;
        let result = CniResult::parse(&result).ok()?;
        Some(
            guest_addresses(&result, POD_IFNAME)
                .iter()
                .map(|a| a.address)
                .collect(),
        )
    }

    fn load_network(&self) -> Result<(NetworkConfigList, Vec<PathBuf>), ConfigError> {
        let network = config::load_first(&self.settings.conf_dir)?;
        if !result::SUPPORTED_VERSIONS.contains(&network.cni_version.as_str()) {
            return Err(ConfigError::Invalid {
                file: network.source,
                problem: format!(
                    "cniVersion {:?} is not one of {}",
                    network.cni_version,
                    result::SUPPORTED_VERSIONS.join(", ")
                ),
            });
        }
        let paths = network
            .plugin_types()
            .map(|plugin| config::find_plugin(plugin, &self.settings.bin_dirs))
            .collect::<Result<_, _>>()?;
        Ok((network, paths))
    }

    fn invocation<'a>(
        &'a self,
        command: CniCommand,
        plugin: &'a str,
        path: &'a Path,
        record: &'a PodRecord,
    ) -> Invocation<'a> {
        Invocation {
            command,
            plugin,
            path,
            container_id: &record.sandbox_id,
            netns: &record.netns,
            ifname: &record.ifname,
            cni_args: &record.cni_args,
            bin_dirs: &self.settings.bin_dirs,
            timeout: self.settings.plugin_timeout,
        }
    }

    /// Steps 4 and 5 of setup; the caller undoes them on error.
    fn add(
        &self,
        record: &mut PodRecord,
        network: &NetworkConfigList,
        plugin_paths: &[PathBuf],
        tap: OwnedFd,
    ) -> Result<PodNetwork, NetworkError> {
        let mut last = None;
        for (index, (plugin, path)) in network.plugins.iter().zip(plugin_paths).enumerate() {
            let kind = plugin.get("type").and_then(Value::as_str).unwrap_or("");
            record.started = index + 1;
            cache::write(&self.settings.cache_dir, record)?;
            let input = args::plugin_input(
                plugin,
                &network.name,
                &network.cni_version,
                record.result.as_ref(),
                &record.capability_args,
            );
            let output = self
                .invocation(CniCommand::Add, kind, path, record)
                .run(&input)?;
            let parse_error = |source| NetworkError::Result {
                plugin: kind.to_owned(),
                source,
            };
            let parsed = CniResult::parse(&output).map_err(parse_error)?;
            let raw: Value =
                serde_json::from_slice(&output).map_err(|e| parse_error(ResultError::Json(e)))?;
            record.result = Some(raw);
            cache::write(&self.settings.cache_dir, record)?;
            last = Some(parsed);
        }
        let result = last.ok_or_else(|| NetworkError::NoPodInterface(POD_IFNAME.to_owned()))?;
        if result.sandbox_interface(POD_IFNAME).is_none() {
            return Err(NetworkError::NoPodInterface(POD_IFNAME.to_owned()));
        }
        let joined = tap::join(&record.netns, POD_IFNAME, TAP_NAME)?;
        record.complete = true;
        cache::write(&self.settings.cache_dir, record)?;
        Ok(PodNetwork {
            netns: record.netns.clone(),
            tap,
            tap_name: TAP_NAME.to_owned(),
            mac: joined.mac,
            mtu: joined.mtu,
            addresses: guest_addresses(&result, POD_IFNAME),
            routes: joined
                .routes
                .into_iter()
                .map(|r| GuestRoute {
                    destination: r.destination,
                    prefix_len: r.prefix_len,
                    gateway: r.gateway,
                })
                .collect(),
            dns: result.dns.clone(),
            result,
        })
    }

    fn undo(&self, record: &PodRecord) -> Result<(), NetworkError> {
        let network = NetworkConfigList::from_json(
            record.network.clone(),
            &cache::path(&self.settings.cache_dir, &record.sandbox_id),
        )?;
        // A file left by a crash between its creation and its bind mount is no netns, and
        // the plugins would fail to enter it; without it they treat the netns as gone.
        if !netns::is_netns(&record.netns) {
            netns::remove(&record.netns)?;
        }
        for plugin in network.plugins.iter().take(record.started).rev() {
            let kind = plugin.get("type").and_then(Value::as_str).unwrap_or("");
            let path = config::find_plugin(kind, &self.settings.bin_dirs)?;
            let input = args::plugin_input(
                plugin,
                &network.name,
                &network.cni_version,
                record.result.as_ref(),
                &record.capability_args,
            );
            self.invocation(CniCommand::Del, kind, &path, record)
                .run(&input)?;
        }
        netns::remove(&record.netns)?;
        cache::remove(&self.settings.cache_dir, &record.sandbox_id)?;
        Ok(())
    }
}

fn check_sandbox_id(id: &str) -> Result<(), NetworkError> {
    let plain = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if plain {
        Ok(())
    } else {
        Err(NetworkError::InvalidSandboxId(id.to_owned()))
    }
}

/// The result's addresses on the pod interface (or on no interface in particular).
fn guest_addresses(result: &CniResult, ifname: &str) -> Vec<GuestAddress> {
    let pod_interface = result.sandbox_interface(ifname).map(|(index, _)| index);
    result
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none() || ip.interface == pod_interface)
        .filter_map(|ip| {
            let (address, prefix_len) = result::parse_cidr(&ip.address).ok()?;
            Some(GuestAddress {
                address,
                prefix_len,
                gateway: ip.gateway,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_ids_that_are_not_plain_names_are_refused() {
        for bad in ["", "../x", ".hidden", "a/b", "a b"] {
            assert!(check_sandbox_id(bad).is_err(), "{bad:?}");
        }
        check_sandbox_id("0123abcdef_-.x").unwrap();
    }

    #[test]
    fn status_names_the_missing_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net.d");
        std::fs::create_dir(&conf).unwrap();
        let mut settings = CniSettings::with_cache_dir(dir.path().join("cache"));
        settings.conf_dir = conf.clone();
        settings.bin_dirs = vec![dir.path().join("bin")];
        let cni = Cni::new(settings);
        let reason = cni.status().unwrap_err().reason;
        assert!(
            reason.contains("no network config found") && reason.contains("net.d"),
            "{reason}"
        );
        std::fs::write(
            conf.join("10-x.conflist"),
            r#"{"name":"x","cniVersion":"1.0.0","plugins":[{"type":"no-such-plugin"}]}"#,
        )
        .unwrap();
        let reason = cni.status().unwrap_err().reason;
        assert!(reason.contains("no-such-plugin"), "{reason}");
        std::fs::write(
            conf.join("10-x.conflist"),
            r#"{"name":"x","cniVersion":"0.2.0","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        let reason = cni.status().unwrap_err().reason;
        assert!(
            reason.contains("0.2.0") && reason.contains("10-x.conflist"),
            "{reason}"
        );
    }
}
