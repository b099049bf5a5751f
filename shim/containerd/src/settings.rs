//! What the shim reads of the node: vpod's configuration file (the one `vpod-cri` reads,
//! `$VPOD_CONFIG` or `/etc/vpod/config.toml`; containerd passes its environment on to
//! shims), where its pods live, and their ids.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use vpod_cri::config::{Config, ConfigError, DEFAULT_CONFIG};

/// The environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "VPOD_CONFIG";

/// The node's vpod configuration; a missing default file gives the defaults, a missing
/// file named by `$VPOD_CONFIG` is an error.
pub fn load() -> Result<Config, ConfigError> {
    match std::env::var_os(CONFIG_ENV) {
        Some(path) => Config::load(Path::new(&path), false),
        None => Config::load(Path::new(DEFAULT_CONFIG), true),
    }
}

/// Where the pods of containerd namespace `namespace` live (each in `sandboxes/<id>/`
/// below it): apart from vpod-cri's, under the same root. A namespace of over 10
/// characters (containerd allows 76) becomes its first 3 made safe, `-` and 8 hex digits of
/// its SHA-256 (12 characters, so never a namespace kept as it is), so that the pods' socket
/// paths under the default root stay within a unix socket's 107 bytes.
pub fn state_dir(config: &Config, namespace: &str) -> PathBuf {
    let mut name = if namespace.len() <= 10 {
        sanitize(namespace, 10)
    } else {
        format!("{}-{}", sanitize(namespace, 3), short_hash(namespace))
    };
    if name.is_empty() || name.chars().all(|c| c == '.') {
        name.insert(0, '_');
    }
    config.root.join("containerd").join(name)
}

fn short_hash(text: &str) -> String {
    let hash = Sha256::digest(text.as_bytes());
    hash[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The sandbox id of the pod grouped under containerd's id `group` (the CRI sandbox id,
/// or the container's own for a plain `ctr run`): the id itself when it is a valid
/// sandbox id (at most 32 of `[A-Za-z0-9_.-]`, not starting with a punctuation mark),
/// else its first 23 characters made safe, `-` and 8 hex digits of its SHA-256.
pub fn sandbox_id(group: &str) -> String {
    let valid = !group.is_empty()
        && group.len() <= 32
        && group
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        return group.to_owned();
    }
    let hex = short_hash(group);
    let head = sanitize(group, 23);
    let head = head.trim_start_matches(['_', '.', '-']);
    if head.is_empty() {
        format!("p{hex}")
    } else {
        format!("{head}-{hex}")
    }
}

fn sanitize(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_are_kept_and_long_or_odd_ones_hashed_to_32() {
        assert_eq!(sandbox_id("web-1"), "web-1");
        let cri = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let id = sandbox_id(cri);
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.starts_with("0123456789abcdef0123456-"), "{id}");
        assert_ne!(id, sandbox_id(&format!("{cri}x")));
        let odd = sandbox_id("../../etc");
        assert!(!odd.contains('/'), "{odd}");
        assert!(odd.chars().next().unwrap().is_ascii_alphanumeric(), "{odd}");
        assert!(sandbox_id("").starts_with('p'));
    }

    #[test]
    fn namespaces_cannot_leave_the_root() {
        let config = Config::default();
        let dir = state_dir(&config, "../x");
        assert!(dir.starts_with(config.root.join("containerd")));
        assert_eq!(dir.file_name().unwrap(), ".._x");
        assert_eq!(state_dir(&config, "..").file_name().unwrap(), "_..");
        assert_eq!(state_dir(&config, "k8s.io").file_name().unwrap(), "k8s.io");
        let long = "a-namespace-of-many-words-".repeat(3);
        let name = state_dir(&config, &long);
        let name = name.file_name().unwrap().to_str().unwrap();
        assert_eq!(name.len(), 12, "{name}");
        assert!(name.starts_with("a-n-"), "{name}");
        assert_ne!(
            state_dir(&config, &long),
            state_dir(&config, &format!("{long}x"))
        );
    }

    #[test]
    fn the_longest_namespace_and_id_under_the_default_root_fit_a_socket_path() {
        let config = Config::default();
        let dir = state_dir(&config, &"n".repeat(76))
            .join("sandboxes")
            .join(sandbox_id(&"c".repeat(64)))
            .join("vm/vsock.sock");
        assert!(
            dir.as_os_str().len() <= vpod_sandbox::MAX_SOCKET_PATH,
            "{}",
            dir.display()
        );
    }
}
