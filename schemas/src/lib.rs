//! Caravan's resource model and jobspec decoding.
//!
//! The types here serialize to Nomad's API form (PascalCase keys, durations as integer
//! nanoseconds), so an object read back from Caravan's API is what Nomad would return.
pub mod agent_config;
pub mod alloc;
pub mod canonical;
pub mod deployment;
pub mod duration;
pub mod eval;
pub mod ids;
pub mod job;
pub mod jobspec;
pub mod lb;
pub mod node;
pub mod plan;
pub mod resources;
pub mod schema;
pub mod service;
pub mod time;
pub mod validate;

pub use duration::Duration;
pub use ids::*;
pub use job::Job;
