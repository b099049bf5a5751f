//! The pod's network: its netns and tap before the VM boots, CNI's ADD while it boots (its
//! addresses, routes and MAC address to the guest once both are done), DEL when the pod
//! stops, is removed, or was left half made by a crash. Without a CNI configuration pods
//! have no network (Status says NetworkReady false).

use std::net::IpAddr;

use std::sync::Arc;

use vpod_network::config::ConfigError;
use vpod_network::tap::TapError;
use vpod_network::{
    Cni, CniSettings, DnsCapability, NetworkError, PodNetwork, PodNetworkRequest, PortMapping,
    PreparedNetwork, Protocol,
};
use vpod_sandbox::network::{GuestInterface, GuestNetwork, MacAddress, Nic, POD_IFNAME};

use crate::config::Config;
use crate::runtime::{Runtime, RuntimeError};
use crate::state::{PodNetworkRecord, PodRecord, PortMappingRecord};

/// The CNI settings of `config`, the per-pod records under `<root>/network`.
pub fn cni(config: &Config, root: &std::path::Path) -> Cni {
    let network = &config.network;
    Cni::new(CniSettings {
        conf_dir: network.conf_dir.clone(),
        bin_dirs: network.bin_dirs.clone(),
        cache_dir: root.join("network"),
        netns_dir: network.netns_dir.clone(),
        plugin_timeout: std::time::Duration::from_secs(network.plugin_timeout_secs),
    })
}

/// What a pod's network gave: the record's part and the VM's part.
pub struct PodNetworkSetup {
    pub record: PodNetworkRecord,
    pub guest: GuestNetwork,
}

/// A pod's network before its plugins ran: the netns, and the NIC the VM boots with (the
/// tap, and a MAC address of our own that the guest trades for the CNI interface's).
pub struct PreparedPodNetwork {
    pub netns: std::path::PathBuf,
    pub nic: Nic,
    plugins: PreparedNetwork,
}

impl Runtime {
    /// The pod's netns and tap, for its VM to boot on while [`Runtime::run_plugins`] runs
    /// CNI's ADD; `None` when there is no CNI configuration at all.
    pub(in crate::runtime) async fn prepare_network(
        &self,
        pod: &PodRecord,
    ) -> Result<Option<PreparedPodNetwork>, RuntimeError> {
        let request = network_request(pod);
        let cni = self.cni.clone();
        let made = tokio::task::spawn_blocking(move || cni.prepare(&request))
            .await
            .map_err(RuntimeError::BootTask)?;
        let plugins = match made {
            Ok(plugins) => plugins,
            Err(NetworkError::Config(e)) if no_configuration(&e) => {
                tracing::debug!(pod = %pod.id, "no CNI configuration: a pod without a network");
                return Ok(None);
            }
            Err(e) => return Err(RuntimeError::Network(e)),
        };
        let tap = match plugins.tap.try_clone() {
            Ok(tap) => tap,
            Err(e) => {
                let error = RuntimeError::Network(NetworkError::Tap(TapError::Dup(e)));
                drop(plugins);
                self.tear_down_network_logged(&pod.id).await;
                return Err(error);
            }
        };
        let nic = Nic {
            tap: Arc::new(tap),
            interface: GuestInterface {
                name: POD_IFNAME.to_owned(),
                mac: boot_mac(&pod.id),
                new_mac: None,
                mtu: 0,
                addresses: Vec::new(),
            },
        };
        Ok(Some(PreparedPodNetwork {
            netns: plugins.netns.clone(),
            nic,
            plugins,
        }))
    }

    /// CNI's ADD for a prepared pod network, on a thread of its own: the guest's side of
    /// it once it is done (the guest NIC keeps the MAC address it booted with and takes
    /// the CNI interface's). On error the network is undone.
    pub(in crate::runtime) fn run_plugins(
        &self,
        pod_id: &str,
        prepared: PreparedPodNetwork,
    ) -> tokio::task::JoinHandle<Result<PodNetworkSetup, RuntimeError>> {
        let cni = self.cni.clone();
        let pod = pod_id.to_owned();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let network = cni
                .complete(prepared.plugins)
                .map_err(RuntimeError::Network)?;
            let cni_ms = started.elapsed().as_secs_f64() * 1000.0;
            tracing::info!(pod = %pod, netns = %network.netns.display(), ips = ?network.addresses, cni_ms, "pod network ready");
            let mut made = setup(network)?;
            for nic in &mut made.guest.nics {
                nic.interface.new_mac = Some(nic.interface.mac);
                nic.interface.mac = prepared.nic.interface.mac;
            }
            Ok(made)
        })
    }

    /// CNI's DEL for the pod and its namespace removed; nothing to do is fine.
    pub(in crate::runtime) async fn tear_down_network(
        &self,
        pod_id: &str,
    ) -> Result<(), RuntimeError> {
        let cni = self.cni.clone();
        let id = pod_id.to_owned();
        tokio::task::spawn_blocking(move || cni.teardown(&id))
            .await
            .map_err(RuntimeError::BootTask)?
            .map_err(RuntimeError::Network)
    }

    /// As [`Runtime::tear_down_network`], logging instead of failing (clean-up paths).
    pub(in crate::runtime) async fn tear_down_network_logged(&self, pod_id: &str) {
        if let Err(e) = self.tear_down_network(pod_id).await {
            tracing::warn!(pod = %pod_id, error = %super::error_chain(&e), "tearing down the pod's network");
        }
    }

    /// Whether pods get a network: `Err` says why not (Status's NetworkReady).
    pub fn network_status(&self) -> Result<(), vpod_network::NotReady> {
        self.cni.status()
    }
}

/// The address the guest NIC boots with, before it takes the CNI interface's: locally
/// administered, unicast, from the pod id (random hex), so never the same in two pods.
fn boot_mac(pod_id: &str) -> MacAddress {
    let mut mac = [0x02, 0, 0, 0, 0, 1];
    for (byte, pair) in mac[1..].iter_mut().zip(pod_id.as_bytes().chunks(2)) {
        if let Some(value) = std::str::from_utf8(pair)
            .ok()
            .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        {
            *byte = value;
        }
    }
    MacAddress(mac)
}

/// An empty conf dir, or none at all: pods go without a network. Any other trouble reading
/// the configuration is an error.
fn no_configuration(error: &ConfigError) -> bool {
    match error {
        ConfigError::NoConfig(_) => true,
        ConfigError::ReadDir(_, e) => e.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// The pod as the plugins are told of it (containerd's CNI_ARGS and capabilities).
fn network_request(pod: &PodRecord) -> PodNetworkRequest {
    let settings = &pod.settings;
    PodNetworkRequest {
        sandbox_id: pod.id.clone(),
        pod_name: settings.name.clone(),
        pod_namespace: settings.namespace.clone(),
        pod_uid: settings.uid.clone(),
        port_mappings: settings.port_mappings.iter().map(port_mapping).collect(),
        dns: Some(DnsCapability {
            servers: settings.dns_servers.clone(),
            searches: settings.dns_searches.clone(),
            options: settings.dns_options.clone(),
        }),
    }
}

fn port_mapping(mapping: &PortMappingRecord) -> PortMapping {
    PortMapping {
        host_port: mapping.host_port,
        container_port: mapping.container_port,
        protocol: match mapping.protocol.as_str() {
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => Protocol::Tcp,
        },
        host_ip: mapping.host_ip.parse::<IpAddr>().ok(),
    }
}

/// The CNI result as the record keeps it and the VM takes it.
fn setup(network: PodNetwork) -> Result<PodNetworkSetup, RuntimeError> {
    let record = PodNetworkRecord {
        netns: network.netns.clone(),
        ips: network
            .addresses
            .iter()
            .map(|a| a.address.to_string())
            .collect(),
    };
    let guest = GuestNetwork::try_from(network).map_err(RuntimeError::NetworkResult)?;
    Ok(PodNetworkSetup { record, guest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_macs_are_local_unicast_and_follow_the_pod_id() {
        assert_eq!(
            boot_mac("0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
            MacAddress([0x02, 0x0a, 0x1b, 0x2c, 0x3d, 0x4e])
        );
        assert_eq!(boot_mac("zz"), MacAddress([0x02, 0, 0, 0, 0, 1]));
    }

    #[test]
    fn port_mappings_and_dns_reach_the_plugins() {
        let mut pod = crate::state::PodRecord {
            id: "p1".into(),
            settings: Default::default(),
            created_at_ns: 0,
            vcpus: 1,
            memory_mib: 128,
            phase: crate::state::PodPhase::Creating,
            reason: String::new(),
            network: None,
            cgroup: None,
        };
        pod.settings.port_mappings = vec![PortMappingRecord {
            protocol: "udp".into(),
            container_port: 53,
            host_port: 5353,
            host_ip: "127.0.0.1".into(),
        }];
        pod.settings.dns_servers = vec!["10.96.0.10".into()];
        let request = network_request(&pod);
        assert_eq!(request.sandbox_id, "p1");
        assert_eq!(
            request.port_mappings,
            [PortMapping {
                host_port: 5353,
                container_port: 53,
                protocol: Protocol::Udp,
                host_ip: Some("127.0.0.1".parse().unwrap()),
            }]
        );
        assert_eq!(request.dns.unwrap().servers, ["10.96.0.10"]);
    }
}
