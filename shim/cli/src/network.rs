//! `vpod run --network bridge` and `--publish`: the pod on the bridge network vpod ships
//! (Debian's CNI plugins: bridge `vpod0` on 10.89.0.0/16 with masquerade, host-local, portmap),
//! written once to `<root>/cni/net.d` where a user may edit it; a pod's network is torn down
//! when the foreground run ends or by `vpod rm`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use vpod_network::{Cni, CniSettings, PodNetworkRequest, PortMapping, Protocol};
use vpod_sandbox::network::GuestNetwork;

/// The network configuration vpod writes when `<root>/cni/net.d` has none.
const BRIDGE_CONFLIST: &str = r#"{
  "cniVersion": "1.0.0",
  "name": "vpod",
  "plugins": [
    {"type": "bridge", "bridge": "vpod0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.89.0.0/16"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "IPAM_DIR"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
"#;

/// A host port forwarded to the container: `[IP:]HOST:CONTAINER[/tcp|udp|sctp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish(pub PortMapping);

impl std::str::FromStr for Publish {
    type Err = String;

    fn from_str(value: &str) -> Result<Publish, String> {
        const USAGE: &str = "takes [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp|sctp]";
        let (ports, protocol) = match value.split_once('/') {
            Some((ports, "tcp")) => (ports, Protocol::Tcp),
            Some((ports, "udp")) => (ports, Protocol::Udp),
            Some((ports, "sctp")) => (ports, Protocol::Sctp),
            Some(_) => return Err(USAGE.into()),
            None => (value, Protocol::Tcp),
        };
        let (host_ip, ports) = match ports.rsplitn(3, ':').collect::<Vec<_>>()[..] {
            [container, host] => (None, (host, container)),
            [container, host, ip] => (
                Some(ip.parse::<IpAddr>().map_err(|_| USAGE.to_string())?),
                (host, container),
            ),
            _ => return Err(USAGE.into()),
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|&p| p != 0);
        match (port(ports.0), port(ports.1)) {
            (Some(host_port), Some(container_port)) => Ok(Publish(PortMapping {
                host_port,
                container_port,
                protocol,
                host_ip,
            })),
            _ => Err(USAGE.into()),
        }
    }
}

/// The CNI plugins as `vpod` runs them for pods under `root`.
pub fn cni(root: &Path) -> Cni {
    let base = root.join("cni");
    Cni::new(CniSettings {
        conf_dir: base.join("net.d"),
        cache_dir: base.join("pods"),
        plugin_timeout: Duration::from_secs(30),
        ..CniSettings::with_cache_dir(PathBuf::new())
    })
}

/// Writes vpod's bridge configuration unless the conf dir has one already.
fn ensure_config(root: &Path) -> anyhow::Result<()> {
    let base = root.join("cni");
    let conf_dir = base.join("net.d");
    std::fs::create_dir_all(&conf_dir)
        .with_context(|| format!("creating {}", conf_dir.display()))?;
    let has_config = std::fs::read_dir(&conf_dir)?.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.ends_with(".conflist") || name.ends_with(".conf") || name.ends_with(".json")
    });
    if has_config {
        return Ok(());
    }
    let text = BRIDGE_CONFLIST.replace("IPAM_DIR", &base.join("ipam").display().to_string());
    let path = conf_dir.join("10-vpod-bridge.conflist");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// The pod's network on vpod's bridge, as its VM takes it; its first address.
pub fn set_up(
    root: &Path,
    pod_id: &str,
    publish: &[Publish],
) -> anyhow::Result<(GuestNetwork, Option<IpAddr>)> {
    ensure_config(root)?;
    let request = PodNetworkRequest {
        sandbox_id: pod_id.to_owned(),
        pod_name: pod_id.to_owned(),
        pod_namespace: "vpod".to_owned(),
        pod_uid: pod_id.to_owned(),
        port_mappings: publish.iter().map(|p| p.0.clone()).collect(),
        dns: None,
    };
    let network = cni(root)
        .setup(&request)
        .context("setting up the pod's network")?;
    let ip = network.addresses.first().map(|a| a.address);
    let guest = GuestNetwork::try_from(network).context("the pod's network")?;
    Ok((guest, ip))
}

/// Releases the pod's network (nothing to do is fine).
pub fn tear_down(root: &Path, pod_id: &str) -> anyhow::Result<()> {
    cni(root)
        .teardown(pod_id)
        .with_context(|| format!("releasing the network of pod {pod_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_reads_like_docker() {
        let p: Publish = "8080:80".parse().unwrap();
        assert_eq!(
            p.0,
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp,
                host_ip: None
            }
        );
        let p: Publish = "127.0.0.1:5353:53/udp".parse().unwrap();
        assert_eq!(p.0.protocol, Protocol::Udp);
        assert_eq!(p.0.host_ip, Some("127.0.0.1".parse().unwrap()));
        for bad in [
            "80",
            "0:80",
            "8080:70000",
            "x:80",
            "8080:80/icmp",
            "a.b:1:2",
        ] {
            assert!(bad.parse::<Publish>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_bridge_config_is_written_once_and_is_valid_json() {
        let dir = tempfile::tempdir().unwrap();
        ensure_config(dir.path()).unwrap();
        let path = dir.path().join("cni/net.d/10-vpod-bridge.conflist");
        let text = std::fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json["plugins"][0]["ipam"]["dataDir"],
            dir.path().join("cni/ipam").display().to_string()
        );
        std::fs::write(&path, "edited").unwrap();
        ensure_config(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "edited");
    }
}
