//! Caravan: the composition root. I/O lives here; pure logic lives in `caravan-schemas` and
//! `caravan-controllers`.
pub mod agent;
pub mod api;
pub mod cli;
pub mod client;
pub mod dns;
pub mod drivers;
pub mod lb;
pub mod metrics;
pub mod server;
pub mod store;
