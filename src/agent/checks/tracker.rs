//! Counting check results — pure, time is an input.
//!
//! - [`StatusTracker`]: a check's reported status, from its raw results, with Consul's and
//!   Nomad's `success_before_passing` (that many successes in a row before it reads
//!   `success`) and `failures_before_critical` (that many failures in a row before it reads
//!   `failure`); until then it keeps what it said before (`pending`, or `initial_status`).
//! - [`RestartCounter`]: `check_restart` — after `grace` from the task's (re)start, `limit`
//!   unhealthy results in a row ask for a restart; a warning counts as healthy with
//!   `ignore_warnings`.

use super::plan::RestartRule;
use caravan_schemas::alloc::CheckStatus;
use std::time::Instant;

/// One run's raw result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A script check that exited 1.
    Warning,
    Failure,
}

impl Outcome {
    /// A script check's exit code: 0 success, 1 warning, anything else failure.
    pub fn from_exit_code(code: i32) -> Self {
        match code {
            0 => Outcome::Success,
            1 => Outcome::Warning,
            _ => Outcome::Failure,
        }
    }
}

/// A check's reported status, from its results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusTracker {
    status: CheckStatus,
    successes: u32,
    failures: u32,
    success_before_passing: u32,
    failures_before_critical: u32,
}

impl StatusTracker {
    pub fn new(
        initial: CheckStatus,
        success_before_passing: u32,
        failures_before_critical: u32,
    ) -> Self {
        Self {
            status: initial,
            successes: 0,
            failures: 0,
            success_before_passing,
            failures_before_critical,
        }
    }

    pub fn status(&self) -> CheckStatus {
        self.status
    }

    /// Records a result (a warning is not a success) and returns the status now.
    pub fn observe(&mut self, outcome: Outcome) -> CheckStatus {
        if outcome == Outcome::Success {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.successes >= self.success_before_passing.max(1) {
                self.status = CheckStatus::Success;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.failures_before_critical.max(1) {
                self.status = CheckStatus::Failure;
            }
        }
        self.status
    }
}

/// `check_restart` for one check of one task run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartCounter {
    limit: u32,
    ignore_warnings: bool,
    grace_until: Instant,
    unhealthy: u32,
}

impl RestartCounter {
    /// Counting starts `rule.grace` after `started` (the task's start).
    pub fn new(rule: &RestartRule, started: Instant) -> Self {
        Self {
            limit: rule.limit.max(1),
            ignore_warnings: rule.ignore_warnings,
            grace_until: started + rule.grace,
            unhealthy: 0,
        }
    }

    /// Records a result with the status it left the check in; true when the task should be
    /// restarted now (the count then starts over).
    pub fn observe(&mut self, outcome: Outcome, status: CheckStatus, now: Instant) -> bool {
        let unhealthy = status == CheckStatus::Failure
            && !(outcome == Outcome::Warning && self.ignore_warnings)
            && outcome != Outcome::Success;
        if !unhealthy {
            self.unhealthy = 0;
            return false;
        }
        if now < self.grace_until {
            return false;
        }
        self.unhealthy += 1;
        if self.unhealthy >= self.limit {
            self.unhealthy = 0;
            return true;
        }
        false
    }

    /// Unhealthy results counted so far.
    pub fn count(&self) -> u32 {
        self.unhealthy
    }
}

/// Bytes of output a result keeps.
pub const OUTPUT_LIMIT: usize = 4 * 1024;

/// `s` cut to at most `limit` bytes, on a character boundary.
pub fn truncate_output(mut s: String, limit: usize) -> String {
    if s.len() > limit {
        let mut end = limit;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use CheckStatus::{Failure, Pending, Success};
    use Outcome as O;
    use std::time::Duration;

    #[test]
    fn status_follows_each_result_by_default() {
        let mut t = StatusTracker::new(Pending, 0, 0);
        assert_eq!(t.status(), Pending);
        assert_eq!(t.observe(O::Failure), Failure);
        assert_eq!(t.observe(O::Success), Success);
        assert_eq!(t.observe(O::Warning), Failure, "a warning is not passing");
    }

    #[test]
    fn thresholds_hold_the_previous_status() {
        let mut t = StatusTracker::new(Pending, 2, 3);
        assert_eq!(t.observe(O::Success), Pending);
        assert_eq!(t.observe(O::Success), Success);
        assert_eq!(t.observe(O::Failure), Success);
        assert_eq!(t.observe(O::Failure), Success);
        assert_eq!(t.observe(O::Success), Success, "a success breaks the run");
        assert_eq!(t.observe(O::Failure), Success);
        assert_eq!(t.observe(O::Failure), Success);
        assert_eq!(t.observe(O::Failure), Failure);
        assert_eq!(t.observe(O::Success), Failure);
        assert_eq!(t.observe(O::Success), Success);
        // initial_status is what it says until the results decide.
        let mut t = StatusTracker::new(Success, 0, 2);
        assert_eq!(t.status(), Success);
        assert_eq!(t.observe(O::Failure), Success);
        assert_eq!(t.observe(O::Failure), Failure);
    }

    fn rule(limit: u32, grace_secs: u64, ignore_warnings: bool) -> RestartRule {
        RestartRule {
            task: "t".into(),
            limit,
            grace: Duration::from_secs(grace_secs),
            ignore_warnings,
        }
    }

    #[test]
    fn restarts_after_limit_unhealthy_results_in_a_row() {
        let start = Instant::now();
        let later = start + Duration::from_secs(60);
        let mut c = RestartCounter::new(&rule(3, 0, false), start);
        assert!(!c.observe(O::Failure, Failure, later));
        assert!(!c.observe(O::Failure, Failure, later));
        assert_eq!(c.count(), 2);
        assert!(!c.observe(O::Success, Success, later), "a success resets");
        assert_eq!(c.count(), 0);
        assert!(!c.observe(O::Failure, Failure, later));
        assert!(!c.observe(O::Failure, Failure, later));
        assert!(c.observe(O::Failure, Failure, later));
        assert_eq!(c.count(), 0, "counting starts over after a restart");
    }

    #[test]
    fn grace_and_thresholds_and_warnings() {
        let start = Instant::now();
        let mut c = RestartCounter::new(&rule(1, 10, false), start);
        assert!(!c.observe(O::Failure, Failure, start + Duration::from_secs(5)));
        assert!(c.observe(O::Failure, Failure, start + Duration::from_secs(10)));
        // A failure that failures_before_critical has not turned into a failing status yet.
        let mut c = RestartCounter::new(&rule(1, 0, false), start);
        assert!(!c.observe(O::Failure, Pending, start));
        assert!(!c.observe(O::Failure, Success, start));
        assert!(c.observe(O::Warning, Failure, start));
        let mut c = RestartCounter::new(&rule(1, 0, true), start);
        assert!(!c.observe(O::Warning, Failure, start), "warnings ignored");
        assert!(c.observe(O::Failure, Failure, start));
    }

    #[test]
    fn outputs_are_cut_on_character_boundaries() {
        assert_eq!(truncate_output("héllo".into(), 2), "h");
        assert_eq!(truncate_output("héllo".into(), 3), "hé");
        assert_eq!(truncate_output("ok".into(), OUTPUT_LIMIT), "ok");
        assert_eq!(truncate_output("x".repeat(5000), OUTPUT_LIMIT).len(), 4096);
        assert_eq!(Outcome::from_exit_code(0), O::Success);
        assert_eq!(Outcome::from_exit_code(1), O::Warning);
        assert_eq!(Outcome::from_exit_code(2), O::Failure);
        assert_eq!(Outcome::from_exit_code(-1), O::Failure);
    }
}
