//! Caravan's resource model and jobspec decoding.
//!
//! The types here serialize to Nomad's API form (PascalCase keys, durations as integer
//! nanoseconds), so an object read back from Caravan's API is what Nomad would return.
pub mod duration;
pub mod ids;
pub mod jobspec;

pub use duration::Duration;
pub use ids::*;
