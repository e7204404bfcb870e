//! Pure reconcilers and the scheduler.
//!
//! Every controller here is a function `reconcile(desired, observed, now) -> Plan`: no I/O, no
//! clock, no randomness that is not passed in. The thin async loops that watch the store and apply
//! plans live in the `caravan` crate (`src/server/`).
pub mod deployment;
pub mod lb;
pub mod reconcile;
pub mod services;

pub mod scheduler;
