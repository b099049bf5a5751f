//! The sanitiser for tar entry paths: every path an entry names (its own, or a hard link's
//! target) passes here before anything touches the disk.
//!
//! Decisions:
//! - a `..` component anywhere is refused, even where it would stay inside the layer;
//! - a leading `/` is stripped, as Docker and containerd do: an absolute entry names a path
//!   relative to the image root, so `/etc/passwd` lands at `<layer>/etc/passwd`;
//! - empty and `.` components are dropped (`./a//b/` is `a/b`); the empty result is the
//!   layer root itself;
//! - NUL bytes, components over 255 bytes, paths over 4,096 bytes or 256 levels are refused.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

pub const MAX_PATH_BYTES: usize = 4096;
pub const MAX_COMPONENT_BYTES: usize = 255;
pub const MAX_PATH_DEPTH: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TarPathError {
    #[error("path {0:?} has a \"..\" component; entries may not climb out of the layer")]
    ParentComponent(String),
    #[error("path {0:?} is longer than {MAX_PATH_BYTES} bytes")]
    TooLong(String),
    #[error("path {0:?} has a component longer than {MAX_COMPONENT_BYTES} bytes")]
    ComponentTooLong(String),
    #[error("path {0:?} is deeper than {MAX_PATH_DEPTH} levels")]
    TooDeep(String),
    #[error("path {0:?} contains a NUL byte")]
    NulByte(String),
}

/// A path inside a layer, sanitised: no component is empty, `.`, `..`, or holds `/` or NUL.
/// No components means the layer root.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayerPath {
    components: Vec<OsString>,
}

impl LayerPath {
    /// Sanitises a raw tar path (see the module comment for the rules).
    pub fn parse(raw: &[u8]) -> Result<LayerPath, TarPathError> {
        let shown = || String::from_utf8_lossy(raw).into_owned();
        if raw.len() > MAX_PATH_BYTES {
            return Err(TarPathError::TooLong(shown()));
        }
        if raw.contains(&0) {
            return Err(TarPathError::NulByte(shown()));
        }
        let mut components = Vec::new();
        for component in raw.split(|&byte| byte == b'/') {
            match component {
                b"" | b"." => continue,
                b".." => return Err(TarPathError::ParentComponent(shown())),
                _ if component.len() > MAX_COMPONENT_BYTES => {
                    return Err(TarPathError::ComponentTooLong(shown()))
                }
                _ => components.push(OsString::from_vec(component.to_vec())),
            }
        }
        if components.len() > MAX_PATH_DEPTH {
            return Err(TarPathError::TooDeep(shown()));
        }
        Ok(LayerPath { components })
    }

    pub fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    pub fn components(&self) -> &[OsString] {
        &self.components
    }

    /// The parent's components and the last name; `None` for the root.
    pub fn split_last(&self) -> Option<(&[OsString], &OsStr)> {
        self.components
            .split_last()
            .map(|(name, parent)| (parent, name.as_os_str()))
    }

    /// Whether `self` is `ancestor` or lies below it.
    pub fn starts_with(&self, ancestor: &LayerPath) -> bool {
        self.components.starts_with(&ancestor.components)
    }

    /// The path relative to the layer root, as a relative filesystem path.
    pub fn to_relative_path(&self) -> std::path::PathBuf {
        self.components.iter().collect()
    }
}

impl fmt::Display for LayerPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("/")?;
        let joined: Vec<u8> = self
            .components
            .iter()
            .map(|c| c.as_bytes())
            .collect::<Vec<_>>()
            .join(&b'/');
        f.write_str(&String::from_utf8_lossy(&joined))
    }
}

impl fmt::Debug for LayerPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LayerPath({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Component, Path};

    fn names(path: &LayerPath) -> Vec<&str> {
        path.components()
            .iter()
            .map(|c| c.to_str().unwrap())
            .collect()
    }

    #[test]
    fn dot_and_empty_components_are_dropped() {
        let path = LayerPath::parse(b"./usr//bin/./sh").unwrap();
        assert_eq!(names(&path), ["usr", "bin", "sh"]);
        assert!(LayerPath::parse(b"./").unwrap().is_root());
    }

    #[test]
    fn leading_slash_is_stripped() {
        let path = LayerPath::parse(b"/etc/passwd").unwrap();
        assert_eq!(names(&path), ["etc", "passwd"]);
    }

    #[test]
    fn parent_component_is_refused_anywhere() {
        for raw in [&b"../x"[..], b"a/../b", b"a/..", b"/..", b".."] {
            assert!(matches!(
                LayerPath::parse(raw),
                Err(TarPathError::ParentComponent(_))
            ));
        }
        // Names that merely start with dots are ordinary.
        assert_eq!(names(&LayerPath::parse(b"...").unwrap()), ["..."]);
        assert_eq!(names(&LayerPath::parse(b"..a").unwrap()), ["..a"]);
    }

    #[test]
    fn oversized_or_nul_paths_are_refused() {
        assert!(matches!(
            LayerPath::parse(&[b'a'; 256]),
            Err(TarPathError::ComponentTooLong(_))
        ));
        assert!(matches!(
            LayerPath::parse(&[b'a'; 4097]),
            Err(TarPathError::TooLong(_))
        ));
        assert!(matches!(
            LayerPath::parse("a/".repeat(300).as_bytes()),
            Err(TarPathError::TooDeep(_))
        ));
        assert!(matches!(
            LayerPath::parse(b"a\0b"),
            Err(TarPathError::NulByte(_))
        ));
    }

    fn path_bytes() -> impl Strategy<Value = Vec<u8>> {
        let component = prop_oneof![
            Just(b"..".to_vec()),
            Just(b".".to_vec()),
            Just(Vec::new()),
            Just(b"...".to_vec()),
            Just(b".wh..wh..opq".to_vec()),
            proptest::collection::vec(any::<u8>(), 1..12),
        ];
        (
            any::<bool>(),
            proptest::collection::vec(component, 0..10),
            any::<bool>(),
        )
            .prop_map(|(absolute, parts, trailing)| {
                let mut out = if absolute { b"/".to_vec() } else { Vec::new() };
                out.extend(parts.join(&b'/'));
                if trailing {
                    out.push(b'/');
                }
                out
            })
    }

    proptest! {
        #[test]
        fn any_path_is_refused_or_resolves_inside_the_root(raw in path_bytes()) {
            if let Ok(path) = LayerPath::parse(&raw) {
                let root = Path::new("/layer-root");
                let joined = root.join(path.to_relative_path());
                prop_assert!(joined.starts_with(root));
                // Lexically normal: no `..`, no root or prefix after the first component.
                for component in path.to_relative_path().components() {
                    prop_assert!(matches!(component, Component::Normal(_)));
                }
                for component in path.components() {
                    prop_assert!(!component.as_bytes().contains(&b'/'));
                    prop_assert!(!component.as_bytes().contains(&0));
                    prop_assert!(component != ".." && component != "." && !component.is_empty());
                }
            }
        }
    }
}
