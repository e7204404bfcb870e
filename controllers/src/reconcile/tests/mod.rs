mod deployments;
pub(crate) mod fixtures;
mod props;
mod rollout_props;
mod scenarios;
mod units;
