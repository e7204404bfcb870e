//! Newtypes for identifiers, so a node id is never passed where a job id is wanted.
//!
//! All of them serialize as plain strings, as Nomad's API does.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, random = $random:tt) => {
        $(#[$doc])*
        #[derive(
            Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
        )]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// Wraps an existing identifier.
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The first eight characters, as Nomad's CLI shows ids.
            pub fn short(&self) -> &str {
                self.0.get(..8).unwrap_or(&self.0)
            }

            /// True when nothing was set.
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        id_type!(@random $name, $random);
    };
    (@random $name:ident, true) => {
        impl $name {
            /// A fresh random (UUID v4) identifier.
            pub fn random() -> Self {
                Self(uuid::Uuid::new_v4().to_string())
            }
        }
    };
    (@random $name:ident, false) => {};
}

id_type!(
    /// A job's ID (chosen by the user; `job "example"`).
    JobId, random = false
);
id_type!(
    /// A node's ID (a UUID chosen by the agent and kept in its data dir).
    NodeId, random = true
);
id_type!(
    /// An allocation's ID (UUID).
    AllocId, random = true
);
id_type!(
    /// An evaluation's ID (UUID).
    EvalId, random = true
);
id_type!(
    /// A deployment's ID (UUID).
    DeploymentId, random = true
);
id_type!(
    /// A service registration's ID.
    ServiceId, random = false
);
id_type!(
    /// A service check's ID in an allocation: a hash of the allocation, group, task, service
    /// and check, as Nomad's `NomadCheckID` builds it.
    CheckId, random = false
);
id_type!(
    /// A namespace name; `default` unless set.
    Namespace, random = false
);
id_type!(
    /// A region name; `global` unless set.
    Region, random = false
);

impl Namespace {
    /// Nomad's default namespace.
    pub fn default_ns() -> Self {
        Self("default".into())
    }
}

impl Region {
    /// Nomad's default region.
    pub fn global() -> Self {
        Self("global".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_serialize_as_plain_strings_and_shorten_to_eight() {
        let id = AllocId::new("0123456789abcdef");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"0123456789abcdef\"");
        assert_eq!(id.short(), "01234567");
        assert_eq!(JobId::new("web").short(), "web");
        assert_eq!(NodeId::random().as_str().len(), 36);
    }
}
