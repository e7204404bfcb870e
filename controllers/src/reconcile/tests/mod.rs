mod fixtures;
mod props;
mod scenarios;
mod units;
