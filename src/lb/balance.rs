//! Which instance a request goes to: smooth weighted round-robin across a route's backends (as
//! nginx's `upstream` weights), round-robin among one backend's instances, and the order in
//! which the other instances are tried when a connection is refused.
//!
//! [`swrr_step`] is the pure step; [`Balancer`] wraps it with the shared state many requests
//! update at once (a mutex around the current weights, only when there are several backends, and
//! an atomic counter per backend).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One step of smooth weighted round-robin: every entry gains its weight, the largest current
/// value wins and pays back the total. Over any `sum(weights)` consecutive steps each entry wins
/// exactly `weight` times, spread out rather than in bursts. Answers `None` when every weight is
/// zero (or there are none).
pub fn swrr_step(current: &mut [i64], weights: &[i64]) -> Option<usize> {
    let total: i64 = weights.iter().filter(|w| **w > 0).sum();
    if total <= 0 {
        return None;
    }
    let mut winner: Option<usize> = None;
    for (i, w) in weights.iter().enumerate() {
        if *w <= 0 {
            continue;
        }
        current[i] += *w;
        // The first of equal values wins, so ties break the same way every round.
        if winner.is_none_or(|b| current[i] > current[b]) {
            winner = Some(i);
        }
    }
    let winner = winner?;
    current[winner] -= total;
    Some(winner)
}

/// A backend the balancer may choose: its position in the route's `backends`, its effective
/// weight and how many instances it has.
#[derive(Debug)]
struct Candidate {
    backend: usize,
    instances: usize,
    next: AtomicUsize,
}

/// A request's target: the backend (position in the route's list) and the instance in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    pub backend: usize,
    pub instance: usize,
}

/// The balancing state of one route.
#[derive(Debug)]
pub struct Balancer {
    candidates: Vec<Candidate>,
    weights: Vec<i64>,
    /// Smooth weighted round-robin's current values; unused with a single candidate.
    current: Mutex<Vec<i64>>,
}

impl Balancer {
    /// From each backend's `(weight, number of instances)`. A backend without instances is
    /// skipped and its weight goes to the others in proportion. Weight 0 means no traffic while
    /// a backend of positive weight has instances; when none has, the backends that do have
    /// instances share the traffic equally rather than nothing being served.
    pub fn new(backends: &[(u32, usize)]) -> Balancer {
        let with_instances = || backends.iter().enumerate().filter(|(_, (_, n))| *n > 0);
        let positive = with_instances().any(|(_, (w, _))| *w > 0);
        let mut candidates = Vec::new();
        let mut weights = Vec::new();
        for (backend, (weight, instances)) in with_instances() {
            let weight = if positive { i64::from(*weight) } else { 1 };
            if weight == 0 {
                continue;
            }
            candidates.push(Candidate {
                backend,
                instances: *instances,
                next: AtomicUsize::new(0),
            });
            weights.push(weight);
        }
        let current = Mutex::new(vec![0; weights.len()]);
        Balancer {
            candidates,
            weights,
            current,
        }
    }

    /// The next target; `None` when no backend has an instance.
    pub fn pick(&self) -> Option<Pick> {
        let chosen = match self.candidates.len() {
            0 => return None,
            1 => 0,
            _ => {
                let mut current = self
                    .current
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                swrr_step(&mut current, &self.weights)?
            }
        };
        let c = &self.candidates[chosen];
        let instance = c.next.fetch_add(1, Ordering::Relaxed) % c.instances;
        Some(Pick {
            backend: c.backend,
            instance,
        })
    }

    /// How many distinct targets there are (the most attempts a request gets).
    pub fn targets(&self) -> usize {
        self.candidates.iter().map(|c| c.instances).sum()
    }

    /// Every target other than `first`, in the order to try them after `first` refused a
    /// connection: the rest of its backend (after it, wrapping), then the other backends'.
    pub fn fallbacks(&self, first: Pick) -> impl Iterator<Item = Pick> + '_ {
        let own = self.candidates.iter().find(|c| c.backend == first.backend);
        let same = own.into_iter().flat_map(move |c| {
            (1..c.instances).map(move |k| Pick {
                backend: c.backend,
                instance: (first.instance + k) % c.instances,
            })
        });
        let others = self
            .candidates
            .iter()
            .filter(move |c| c.backend != first.backend)
            .flat_map(|c| {
                (0..c.instances).map(move |instance| Pick {
                    backend: c.backend,
                    instance,
                })
            });
        same.chain(others)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn weights_90_10_are_exact_and_spread() {
        let b = Balancer::new(&[(90, 1), (10, 1)]);
        let picks: Vec<usize> = (0..100).map(|_| b.pick().unwrap().backend).collect();
        assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 10);
        // Spread out: never two picks of the small backend in a row.
        assert!(picks.windows(2).all(|w| !(w[0] == 1 && w[1] == 1)));
    }

    #[test]
    fn backends_without_instances_are_skipped() {
        let b = Balancer::new(&[(90, 0), (10, 2)]);
        let picks: Vec<Pick> = (0..4).map(|_| b.pick().unwrap()).collect();
        assert!(picks.iter().all(|p| p.backend == 1));
        assert_eq!(
            picks.iter().map(|p| p.instance).collect::<Vec<_>>(),
            [0, 1, 0, 1]
        );
        assert_eq!(Balancer::new(&[(50, 0)]).pick(), None);
        assert_eq!(Balancer::new(&[]).pick(), None);
    }

    #[test]
    fn zero_weights_get_traffic_only_when_nothing_else_can() {
        let b = Balancer::new(&[(100, 1), (0, 1)]);
        assert!((0..10).all(|_| b.pick().unwrap().backend == 0));
        let b = Balancer::new(&[(100, 0), (0, 1)]);
        assert_eq!(b.pick().map(|p| p.backend), Some(1));
    }

    #[test]
    fn fallbacks_try_the_same_backend_first() {
        let b = Balancer::new(&[(50, 3), (50, 0), (50, 2)]);
        let first = Pick {
            backend: 0,
            instance: 1,
        };
        let rest: Vec<(usize, usize)> = b
            .fallbacks(first)
            .map(|p| (p.backend, p.instance))
            .collect();
        assert_eq!(rest, [(0, 2), (0, 0), (2, 0), (2, 1)]);
        assert_eq!(b.targets(), 5);
    }

    proptest! {
        /// Over k × sum(weights) picks, each backend with instances gets exactly k × its
        /// weight (weights of empty backends redistributed), and within a backend the
        /// instances take turns.
        #[test]
        fn picks_follow_the_weights_exactly(
            backends in prop::collection::vec((0u32..20, 0usize..4), 1..6),
            k in 1usize..4,
        ) {
            let b = Balancer::new(&backends);
            let positive = backends.iter().any(|(w, n)| *w > 0 && *n > 0);
            let eff: Vec<u64> = backends
                .iter()
                .map(|(w, n)| match (*n > 0, positive) {
                    (false, _) => 0,
                    (true, true) => u64::from(*w),
                    (true, false) => 1,
                })
                .collect();
            let total: u64 = eff.iter().sum();
            if total == 0 {
                prop_assert_eq!(b.pick(), None);
                return Ok(());
            }
            let rounds = k * usize::try_from(total).unwrap();
            let mut per_backend: BTreeMap<usize, u64> = BTreeMap::new();
            let mut per_instance: BTreeMap<(usize, usize), u64> = BTreeMap::new();
            for _ in 0..rounds {
                let p = b.pick().unwrap();
                prop_assert!(p.instance < backends[p.backend].1);
                *per_backend.entry(p.backend).or_default() += 1;
                *per_instance.entry((p.backend, p.instance)).or_default() += 1;
            }
            for (i, w) in eff.iter().enumerate() {
                prop_assert_eq!(per_backend.get(&i).copied().unwrap_or(0), w * k as u64);
            }
            // Round-robin inside a backend: counts differ by at most one.
            for (i, (_, n)) in backends.iter().enumerate() {
                let counts: Vec<u64> = (0..*n)
                    .map(|j| per_instance.get(&(i, j)).copied().unwrap_or(0))
                    .collect();
                if let (Some(lo), Some(hi)) = (counts.iter().min(), counts.iter().max()) {
                    prop_assert!(hi - lo <= 1);
                }
            }
        }

        /// The fallbacks and the first pick together are every target, each once.
        #[test]
        fn fallbacks_cover_every_other_target_once(
            backends in prop::collection::vec((1u32..5, 0usize..4), 1..5),
        ) {
            let b = Balancer::new(&backends);
            if let Some(first) = b.pick() {
                let mut all: Vec<(usize, usize)> = std::iter::once(first)
                    .chain(b.fallbacks(first))
                    .map(|p| (p.backend, p.instance))
                    .collect();
                prop_assert_eq!(all.len(), b.targets());
                all.sort_unstable();
                all.dedup();
                prop_assert_eq!(all.len(), b.targets());
            }
        }
    }
}
