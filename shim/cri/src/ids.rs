//! Pod and container ids: 32 random hex digits (a sandbox's directory name, so its socket
//! paths stay short), and lookup by a unique prefix as crictl users type them.

use std::io::Read;

/// Why an id could not be made or resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("could not read random bytes for an id")]
    Random,
    #[error("no {kind} has an id starting with {prefix:?}")]
    NotFound { kind: &'static str, prefix: String },
    #[error("the {kind} id prefix {prefix:?} is ambiguous ({count} match)")]
    Ambiguous {
        kind: &'static str,
        prefix: String,
        count: usize,
    },
    #[error("the {kind} id is empty")]
    Empty { kind: &'static str },
}

/// The length of the ids this runtime makes.
pub const ID_LEN: usize = 32;

/// A fresh random id.
pub fn new_id() -> Result<String, IdError> {
    let mut bytes = [0u8; ID_LEN / 2];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|_| IdError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The one id in `ids` equal to `wanted`, else the one starting with it.
pub fn resolve<'a, I>(kind: &'static str, wanted: &str, ids: I) -> Result<String, IdError>
where
    I: IntoIterator<Item = &'a String>,
{
    if wanted.is_empty() {
        return Err(IdError::Empty { kind });
    }
    let mut found: Option<&String> = None;
    let mut count = 0;
    for id in ids {
        if id == wanted {
            return Ok(id.clone());
        }
        if id.starts_with(wanted) {
            count += 1;
            found = Some(id);
        }
    }
    match (count, found) {
        (1, Some(id)) => Ok(id.clone()),
        (0, _) | (_, None) => Err(IdError::NotFound {
            kind,
            prefix: wanted.to_string(),
        }),
        (count, Some(_)) => Err(IdError::Ambiguous {
            kind,
            prefix: wanted.to_string(),
            count,
        }),
    }
}

/// Whether `id` is one this runtime could have made (hex, the right length): records
/// named otherwise in the state directory are not ours.
pub fn is_runtime_id(id: &str) -> bool {
    id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn new_ids_are_distinct_lowercase_hex() {
        let a = new_id().unwrap();
        let b = new_id().unwrap();
        assert_ne!(a, b);
        assert!(is_runtime_id(&a), "{a}");
    }

    #[test]
    fn an_exact_id_or_a_unique_prefix_resolves() {
        let known = ids(&["abc123", "abd456", "ab"]);
        assert_eq!(resolve("pod", "abc", &known).unwrap(), "abc123");
        assert_eq!(resolve("pod", "abd456", &known).unwrap(), "abd456");
        // "ab" is itself an id: the exact match wins over the prefix matches.
        assert_eq!(resolve("pod", "ab", &known).unwrap(), "ab");
    }

    #[test]
    fn unknown_ambiguous_and_empty_prefixes_fail() {
        let known = ids(&["abc123", "abd456"]);
        assert!(matches!(
            resolve("pod", "x", &known),
            Err(IdError::NotFound { .. })
        ));
        assert!(matches!(
            resolve("pod", "ab", &known),
            Err(IdError::Ambiguous { count: 2, .. })
        ));
        assert_eq!(
            resolve("container", "", &known),
            Err(IdError::Empty { kind: "container" })
        );
    }

    #[test]
    fn only_our_own_id_shape_is_a_runtime_id() {
        assert!(is_runtime_id(&"a".repeat(32)));
        assert!(!is_runtime_id(&"A".repeat(32)));
        assert!(!is_runtime_id("abc"));
        assert!(!is_runtime_id(&format!("{}/", "a".repeat(31))));
    }
}
