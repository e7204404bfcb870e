//! The client half of the agent: it fingerprints the machine, registers it as a node,
//! heartbeats, watches its allocations and runs their tasks through the drivers.
pub mod artifact;
pub mod checks;
pub mod client;
pub mod env;
pub mod fingerprint;
pub mod health;
pub mod http;
pub mod logs;
pub mod runner;
pub mod sandbox;
pub mod template;
