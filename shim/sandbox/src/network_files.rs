//! The files that give a container its network identity, written into its root by the
//! guest: `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf`. One copy for every front
//! end (the `vpod` CLI's `--hostname`/`--add-host`/`--dns`, the CRI pod's hostname and DNS
//! config).

use crate::container::ContainerFile;

/// A pod's DNS settings, as CRI's DNSConfig carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl DnsConfig {
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.searches.is_empty() && self.options.is_empty()
    }
}

/// What the files say; empty parts leave the image's files in place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkIdentity {
    /// Written to /etc/hostname and named in /etc/hosts.
    pub hostname: Option<String>,
    /// (host, IP) lines added to /etc/hosts.
    pub extra_hosts: Vec<(String, String)>,
    pub dns: DnsConfig,
}

impl NetworkIdentity {
    /// /etc/hostname when a hostname is given, /etc/hosts when a hostname or hosts are,
    /// /etc/resolv.conf when any DNS setting is.
    pub fn files(&self) -> Vec<ContainerFile> {
        let file = |path: &str, content: String| ContainerFile {
            path: path.into(),
            content: content.into_bytes(),
            mode: 0o644,
        };
        let mut files = Vec::new();
        if let Some(name) = &self.hostname {
            files.push(file("/etc/hostname", format!("{name}\n")));
        }
        if self.hostname.is_some() || !self.extra_hosts.is_empty() {
            files.push(file("/etc/hosts", self.hosts()));
        }
        if let Some(resolv) = self.resolv_conf() {
            files.push(file("/etc/resolv.conf", resolv));
        }
        files
    }

    /// /etc/hosts: the loopback names, the hostname on 127.0.1.1, then the extra hosts.
    pub fn hosts(&self) -> String {
        let mut hosts =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        if let Some(name) = &self.hostname {
            hosts.push_str(&format!("127.0.1.1\t{name}\n"));
        }
        for (host, ip) in &self.extra_hosts {
            hosts.push_str(&format!("{ip}\t{host}\n"));
        }
        hosts
    }

    /// /etc/resolv.conf; `None` without DNS settings.
    pub fn resolv_conf(&self) -> Option<String> {
        if self.dns.is_empty() {
            return None;
        }
        let mut text = String::new();
        if !self.dns.searches.is_empty() {
            text.push_str(&format!("search {}\n", self.dns.searches.join(" ")));
        }
        for server in &self.dns.servers {
            text.push_str(&format!("nameserver {server}\n"));
        }
        if !self.dns.options.is_empty() {
            text.push_str(&format!("options {}\n", self.dns.options.join(" ")));
        }
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(files: &[ContainerFile]) -> Vec<&str> {
        files.iter().map(|f| f.path.as_str()).collect()
    }

    #[test]
    fn nothing_given_leaves_the_images_files() {
        assert!(NetworkIdentity::default().files().is_empty());
    }

    #[test]
    fn a_hostname_writes_hostname_and_hosts() {
        let identity = NetworkIdentity {
            hostname: Some("web".into()),
            ..Default::default()
        };
        let files = identity.files();
        assert_eq!(paths(&files), ["/etc/hostname", "/etc/hosts"]);
        assert!(identity.hosts().ends_with("127.0.1.1\tweb\n"));
    }

    #[test]
    fn extra_hosts_and_dns_are_written_in_order() {
        let identity = NetworkIdentity {
            hostname: None,
            extra_hosts: vec![("db".into(), "10.0.0.5".into())],
            dns: DnsConfig {
                servers: vec!["10.0.0.10".into()],
                searches: vec!["svc.local".into(), "local".into()],
                options: vec!["ndots:5".into()],
            },
        };
        assert_eq!(paths(&identity.files()), ["/etc/hosts", "/etc/resolv.conf"]);
        assert!(identity.hosts().ends_with("10.0.0.5\tdb\n"));
        assert_eq!(
            identity.resolv_conf().unwrap(),
            "search svc.local local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
    }
}
