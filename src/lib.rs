//! Caravan: the composition root. I/O lives here; pure logic lives in `caravan-schemas` and
//! `caravan-controllers`.
pub mod store;
