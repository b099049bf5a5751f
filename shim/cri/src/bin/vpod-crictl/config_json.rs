//! crictl's JSON config files (`runp POD.json`, `create ID CONTAINER.json POD.json`) read
//! into the k8s-cri message types.
//!
//! The k8s-cri types derive serde with the proto field names (`log_directory`), which is
//! what crictl's own examples use, but serde's derive wants every non-`Option` field
//! present, while crictl (Go's encoding/json) lets a file leave any field out. So the
//! value is fed through [`Lenient`], a deserializer that knows each struct's field names
//! (serde passes them to `deserialize_struct`) and answers a missing field with the zero
//! value of whatever type asks for it: `""`, `0`, `false`, `[]`, `{}`, `None`, or a nested
//! struct of zeros. It also accepts `camelCase` spellings of field names (protobuf's JSON
//! mapping, `logDirectory`) and refuses keys that name no field, so a typo is an error
//! rather than a silently ignored setting. Map keys (labels, annotations) are kept as
//! written. Enums are their numbers, as in the proto (`"protocol": 0` for TCP).

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::{Map, Value};

/// Why a config file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigJsonError {
    #[error("the file is not valid JSON")]
    Syntax(#[source] serde_json::Error),
    #[error("the file does not describe a {what}: {source}")]
    Shape {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Reads `text` as the message `T` (named `what` in errors).
pub fn from_crictl_json<T: DeserializeOwned>(
    text: &str,
    what: &'static str,
) -> Result<T, ConfigJsonError> {
    let value: Value = serde_json::from_str(text).map_err(ConfigJsonError::Syntax)?;
    T::deserialize(Lenient(value)).map_err(|source| ConfigJsonError::Shape { what, source })
}

/// `logDirectory` -> `log_directory`.
fn snake_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A JSON value whose structs may leave out fields and spell them in camelCase.
struct Lenient(Value);

type Error = serde_json::Error;

/// A map whose values are read leniently and whose keys are plain strings.
fn lenient_map(
    entries: Vec<(String, Lenient)>,
) -> MapDeserializer<'static, std::vec::IntoIter<(String, Lenient)>, Error> {
    MapDeserializer::new(entries.into_iter())
}

impl<'de> IntoDeserializer<'de, Error> for Lenient {
    type Deserializer = Lenient;
    fn into_deserializer(self) -> Lenient {
        self
    }
}

impl<'de> de::Deserializer<'de> for Lenient {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(map) => visitor.visit_map(lenient_map(
                map.into_iter().map(|(k, v)| (k, Lenient(v))).collect(),
            )),
            Value::Array(items) => {
                visitor.visit_seq(SeqDeserializer::new(items.into_iter().map(Lenient)))
            }
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_seq(SeqDeserializer::new(std::iter::empty::<Lenient>())),
            Value::Array(items) => {
                visitor.visit_seq(SeqDeserializer::new(items.into_iter().map(Lenient)))
            }
            other => other.deserialize_seq(visitor),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_map(lenient_map(Vec::new())),
            Value::Object(map) => visitor.visit_map(lenient_map(
                map.into_iter().map(|(k, v)| (k, Lenient(v))).collect(),
            )),
            other => other.deserialize_map(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let given = match self.0 {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => return other.deserialize_struct(name, fields, visitor),
        };
        let mut entries: Vec<(String, Lenient)> = Vec::with_capacity(fields.len());
        for (key, value) in given {
            let field = if fields.contains(&key.as_str()) {
                key
            } else {
                let snake = snake_case(&key);
                if !fields.contains(&snake.as_str()) {
                    return Err(de::Error::unknown_field(&key, fields));
                }
                snake
            };
            if entries.iter().any(|(k, _)| *k == field) {
                return Err(de::Error::custom(format_args!(
                    "the field `{field}` is given twice"
                )));
            }
            entries.push((field, Lenient(value)));
        }
        for field in fields {
            if !entries.iter().any(|(k, _)| k == field) {
                entries.push((field.to_string(), Lenient(Value::Null)));
            }
        }
        visitor.visit_map(lenient_map(entries))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_str(""),
            other => other.deserialize_string(visitor),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_bool(false),
            other => other.deserialize_bool(visitor),
        }
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_i32(0),
            other => other.deserialize_i32(visitor),
        }
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_i64(0),
            other => other.deserialize_i64(visitor),
        }
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_u32(0),
            other => other.deserialize_u32(visitor),
        }
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_u64(0),
            other => other.deserialize_u64(visitor),
        }
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_f64(0.0),
            other => other.deserialize_f64(visitor),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    forward_to_deserialize_any! {
        i8 i16 u8 u16 f32 char unit unit_struct tuple tuple_struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpod_proto::cri::{ContainerConfig, PodSandboxConfig};

    /// The sandbox config of crictl's documentation, fields left out as crictl users do.
    const CRICTL_POD: &str = r#"{
        "metadata": {"name": "nginx-sandbox", "namespace": "default", "attempt": 1,
                     "uid": "hdishd83djaidwnduwk28bcsb"},
        "log_directory": "/tmp",
        "linux": {}
    }"#;

    const CRICTL_CONTAINER: &str = r#"{
        "metadata": {"name": "busybox"},
        "image": {"image": "busybox"},
        "command": ["top"],
        "log_path": "busybox.0.log",
        "linux": {}
    }"#;

    #[test]
    fn crictl_documentation_files_read_with_zero_values_for_missing_fields() {
        let pod: PodSandboxConfig = from_crictl_json(CRICTL_POD, "pod sandbox config").unwrap();
        let meta = pod.metadata.unwrap();
        assert_eq!((meta.name.as_str(), meta.attempt), ("nginx-sandbox", 1));
        assert_eq!(pod.log_directory, "/tmp");
        assert!(pod.hostname.is_empty() && pod.labels.is_empty() && pod.dns_config.is_none());
        let linux = pod.linux.unwrap();
        assert!(linux.security_context.is_none() && linux.cgroup_parent.is_empty());

        let ctr: ContainerConfig = from_crictl_json(CRICTL_CONTAINER, "container config").unwrap();
        assert_eq!(ctr.image.unwrap().image, "busybox");
        assert_eq!(ctr.command, ["top"]);
        assert_eq!(ctr.log_path, "busybox.0.log");
        assert!(ctr.args.is_empty() && !ctr.tty && ctr.metadata.unwrap().attempt == 0);
    }

    #[test]
    fn camel_case_fields_are_accepted_and_label_keys_kept_as_written() {
        let pod: PodSandboxConfig = from_crictl_json(
            r#"{"metadata": {"name": "p"}, "logDirectory": "/var/log/p",
                "dnsConfig": {"servers": ["10.0.0.10"]},
                "labels": {"appName": "web", "io.kubernetes.pod.name": "p"},
                "linux": {"securityContext": {"runAsUser": {"value": 1000}}}}"#,
            "pod sandbox config",
        )
        .unwrap();
        assert_eq!(pod.log_directory, "/var/log/p");
        assert_eq!(pod.dns_config.unwrap().servers, ["10.0.0.10"]);
        assert_eq!(pod.labels["appName"], "web");
        assert_eq!(pod.labels["io.kubernetes.pod.name"], "p");
        let user = pod.linux.unwrap().security_context.unwrap().run_as_user;
        assert_eq!(user.unwrap().value, 1000);
    }

    #[test]
    fn an_unknown_field_is_an_error_naming_it() {
        let err = from_crictl_json::<ContainerConfig>(
            r#"{"metadata": {"name": "c"}, "comand": ["sh"]}"#,
            "container config",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("comand") && text.contains("container config"),
            "{text}"
        );
    }

    #[test]
    fn wrong_types_and_bad_json_are_errors() {
        let err = from_crictl_json::<ContainerConfig>(r#"{"command": "sh"}"#, "container config")
            .unwrap_err();
        assert!(matches!(err, ConfigJsonError::Shape { .. }), "{err}");
        let err = from_crictl_json::<ContainerConfig>("{", "container config").unwrap_err();
        assert!(matches!(err, ConfigJsonError::Syntax(_)), "{err}");
        let err = from_crictl_json::<ContainerConfig>(
            r#"{"log_path": "a", "logPath": "b"}"#,
            "container config",
        )
        .unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }
}
