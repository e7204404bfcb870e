//! Reading jobspecs: Nomad HCL, Nomad JSON, and YAML/JSON manifests.
pub mod error;
pub mod hcl;
pub mod tree;

pub use error::{Location, Problem, SpecError};
pub use tree::{Pos, Seg, SourceMap, Tree};
