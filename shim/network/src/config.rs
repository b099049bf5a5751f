//! Network configuration loading as containerd's go-cni does it: the files `*.conflist`,
//! `*.conf` and `*.json` of the conf dir, sorted by name (libcni's `ConfFiles`); the first
//! one is the pod network. A single-plugin `.conf`/`.json` is wrapped into a list of one
//! (libcni's `ConfListFromConf`). A file that does not parse is an error naming it, not
//! skipped, as go-cni does.

use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Why no network configuration could be loaded, or a plugin is not installed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the cni conf dir {0}")]
    ReadDir(PathBuf, #[source] std::io::Error),
    #[error("no network config found in {0}")]
    NoConfig(PathBuf),
    #[error("cannot read the cni config {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("the cni config {0} is not valid json")]
    Json(PathBuf, #[source] serde_json::Error),
    #[error("the cni config {file}: {problem}")]
    Invalid { file: PathBuf, problem: String },
    #[error("cni plugin {plugin:?} not found in {dirs:?}")]
    PluginNotFound { plugin: String, dirs: Vec<PathBuf> },
}

/// One network: a name, a spec version and the plugins to run in order.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    pub cni_version: String,
    /// Each plugin's own configuration object, as written in the file.
    pub plugins: Vec<Map<String, Value>>,
    /// The file it came from.
    pub source: PathBuf,
}

impl NetworkConfigList {
    /// Each plugin's `type`, in order.
    pub fn plugin_types(&self) -> impl Iterator<Item = &str> {
        self.plugins
            .iter()
            .map(|p| p.get("type").and_then(Value::as_str).unwrap_or(""))
    }

    /// The configuration object as a file would hold it, for the cache.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "name": self.name,
            "cniVersion": self.cni_version,
            "plugins": self.plugins,
        })
    }

    /// Reads back what [`Self::to_json`] wrote (or any conflist object).
    pub fn from_json(value: Value, source: &Path) -> Result<Self, ConfigError> {
        parse_list(value, source)
    }
}

/// The configuration files of `dir` as libcni orders them.
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ConfigError::ReadDir(dir.to_owned(), e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ConfigError::ReadDir(dir.to_owned(), e))?;
        let path = entry.path();
        let wanted = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("conflist" | "conf" | "json")
        );
        if wanted && !path.is_dir() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The first network configuration of `dir`.
pub fn load_first(dir: &Path) -> Result<NetworkConfigList, ConfigError> {
    let file = config_files(dir)?
        .into_iter()
        .next()
        .ok_or_else(|| ConfigError::NoConfig(dir.to_owned()))?;
    load_file(&file)
}

/// One configuration file, a list or a single plugin.
pub fn load_file(file: &Path) -> Result<NetworkConfigList, ConfigError> {
    let bytes = std::fs::read(file).map_err(|e| ConfigError::Read(file.to_owned(), e))?;
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| ConfigError::Json(file.to_owned(), e))?;
    if file.extension().and_then(|e| e.to_str()) == Some("conflist") {
        parse_list(value, file)
    } else {
        wrap_single(value, file)
    }
}

fn invalid(file: &Path, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_owned(),
        problem: problem.into(),
    }
}

fn string_field(
    object: &Map<String, Value>,
    key: &str,
    file: &Path,
) -> Result<String, ConfigError> {
    match object.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(invalid(file, format!("no {key:?} string"))),
    }
}

fn parse_list(value: Value, file: &Path) -> Result<NetworkConfigList, ConfigError> {
    let Value::Object(object) = value else {
        return Err(invalid(file, "not a json object"));
    };
    let name = string_field(&object, "name", file)?;
    let cni_version = string_field(&object, "cniVersion", file)?;
    let Some(Value::Array(list)) = object.get("plugins") else {
        return Err(invalid(file, "no \"plugins\" list"));
    };
    if list.is_empty() {
        return Err(invalid(file, "the \"plugins\" list is empty"));
    }
    let mut plugins = Vec::with_capacity(list.len());
    for (index, plugin) in list.iter().enumerate() {
        let Value::Object(plugin) = plugin else {
            return Err(invalid(file, format!("plugin {index} is not an object")));
        };
        check_plugin_type(plugin, file)?;
        plugins.push(plugin.clone());
    }
    Ok(NetworkConfigList {
        name,
        cni_version,
        plugins,
        source: file.to_owned(),
    })
}

fn wrap_single(value: Value, file: &Path) -> Result<NetworkConfigList, ConfigError> {
    let Value::Object(plugin) = value else {
        return Err(invalid(file, "not a json object"));
    };
    check_plugin_type(&plugin, file)?;
    Ok(NetworkConfigList {
        name: string_field(&plugin, "name", file)?,
        cni_version: string_field(&plugin, "cniVersion", file)?,
        plugins: vec![plugin],
        source: file.to_owned(),
    })
}

/// A plugin's `type` names a binary in the bin dirs, never a path.
fn check_plugin_type(plugin: &Map<String, Value>, file: &Path) -> Result<(), ConfigError> {
    let kind = string_field(plugin, "type", file)?;
    if kind.contains('/') || kind == "." || kind == ".." {
        return Err(invalid(
            file,
            format!("plugin type {kind:?} is not a plain name"),
        ));
    }
    Ok(())
}

/// The first executable named `plugin` in `dirs` (libcni's `FindInPath`).
pub fn find_plugin(plugin: &str, dirs: &[PathBuf]) -> Result<PathBuf, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    dirs.iter()
        .map(|dir| dir.join(plugin))
        .find(|path| {
            std::fs::metadata(path)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| ConfigError::PluginNotFound {
            plugin: plugin.to_owned(),
            dirs: dirs.to_vec(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn first_file_by_name_wins_and_other_extensions_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "20-b.conflist",
            r#"{"name":"b","cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#,
        );
        write(
            dir.path(),
            "10-a.conflist",
            r#"{"name":"a","cniVersion":"0.4.0","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        );
        write(dir.path(), "00-ignored.txt", "not a config");
        let list = load_first(dir.path()).unwrap();
        assert_eq!(list.name, "a");
        assert_eq!(list.cni_version, "0.4.0");
        assert_eq!(
            list.plugin_types().collect::<Vec<_>>(),
            ["bridge", "portmap"]
        );
    }

    #[test]
    fn single_plugin_conf_is_wrapped_into_a_list() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "10-one.conf",
            r#"{"name":"one","cniVersion":"0.3.1","type":"bridge","bridge":"cni9"}"#,
        );
        let list = load_first(dir.path()).unwrap();
        assert_eq!(list.name, "one");
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.plugins[0]["bridge"], "cni9");
    }

    #[test]
    fn empty_dir_says_no_config_in_that_dir() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_first(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn bad_conf_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "10-bad.conflist",
            r#"{"name":"x","cniVersion":"1.0.0","plugins":[]}"#,
        );
        let err = load_first(dir.path()).unwrap_err();
        assert!(err.to_string().contains("10-bad.conflist"), "{err}");
        write(dir.path(), "05-garbage.conf", "{not json");
        let err = load_first(dir.path()).unwrap_err();
        assert!(err.to_string().contains("05-garbage.conf"), "{err}");
        write(
            dir.path(),
            "01-path.conf",
            r#"{"name":"x","cniVersion":"1.0.0","type":"../bin/sh"}"#,
        );
        assert!(matches!(
            load_first(dir.path()),
            Err(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn missing_plugin_is_named() {
        let err = find_plugin("no-such-plugin", &[PathBuf::from("/nonexistent")]).unwrap_err();
        assert!(err.to_string().contains("no-such-plugin"), "{err}");
    }
}
