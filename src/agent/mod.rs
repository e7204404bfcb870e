//! The client half of the agent: it fingerprints the machine, registers it as a node,
//! heartbeats, watches its allocations and runs their tasks through the drivers.
pub mod client;
pub mod env;
pub mod fingerprint;
pub mod http;
pub mod logs;
pub mod runner;
