//! Property tests for `kind: TrafficSplit` manifests: any list of weights (negative, fractional,
//! huge, words) is either decoded with the weights and subsets as written, or refused with the
//! path of the offending value; never a panic.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use caravan_schemas::jobspec::{self, Document, VariableInputs};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Weight {
    Whole(i64),
    Fraction(f64),
    Word(String),
}

impl Weight {
    fn yaml(&self) -> String {
        match self {
            Weight::Whole(n) => n.to_string(),
            Weight::Fraction(f) => format!("{f:.3}"),
            Weight::Word(w) => format!("{w:?}"),
        }
    }
    fn valid(&self) -> Option<u32> {
        match self {
            Weight::Whole(n) => u32::try_from(*n).ok(),
            _ => None,
        }
    }
}

fn weight() -> impl Strategy<Value = Weight> {
    prop_oneof![
        6 => (0i64..200).prop_map(Weight::Whole),
        1 => (-100i64..0).prop_map(Weight::Whole),
        1 => (4_294_967_290i64..4_294_967_300).prop_map(Weight::Whole),
        1 => (0.01f64..50.0).prop_filter("not whole", |f| f.fract() > 0.01).prop_map(Weight::Fraction),
        1 => "[a-z]{1,6}".prop_map(Weight::Word),
    ]
}

fn subset() -> impl Strategy<Value = (Option<bool>, Option<u64>, Vec<String>)> {
    (
        proptest::option::of(any::<bool>()),
        proptest::option::of(0u64..10),
        proptest::collection::vec("[a-z]{1,5}", 0..3),
    )
}

proptest! {
    #[test]
    fn splits_decode_exactly_or_fail_at_the_weight(
        shares in proptest::collection::vec((weight(), subset()), 0..5)
    ) {
        let mut text = String::from(
            "apiVersion: caravan.io/v1\nkind: TrafficSplit\nmetadata: {name: p}\nspec:\n  service: web\n  splits:",
        );
        if shares.is_empty() {
            text.push_str(" []");
        }
        text.push('\n');
        for (w, (canary, version, tags)) in &shares {
            text.push_str(&format!("    - weight: {}\n      subset:\n", w.yaml()));
            if let Some(c) = canary {
                text.push_str(&format!("        canary: {c}\n"));
            }
            if let Some(v) = version {
                text.push_str(&format!("        job_version: {v}\n"));
            }
            // Quoted: YAML reads a bare `n` or `no` as false.
            let quoted: Vec<String> = tags.iter().map(|t| format!("{t:?}")).collect();
            text.push_str(&format!("        tags: [{}]\n", quoted.join(", ")));
        }
        let result = jobspec::decode("p.yaml", &text, &VariableInputs::default());
        let weights: Option<Vec<u32>> = shares.iter().map(|(w, _)| w.valid()).collect();
        match (weights, result) {
            (Some(ws), Ok(mut docs)) => {
                prop_assert!(!ws.is_empty() && ws.iter().any(|w| *w > 0), "accepted {ws:?}");
                let Some(Document::TrafficSplit(split)) = docs.pop() else {
                    panic!("not a split");
                };
                let got: Vec<u32> = split.splits.iter().map(|s| s.weight).collect();
                prop_assert_eq!(got, ws);
                for (s, (_, (canary, version, tags))) in split.splits.iter().zip(&shares) {
                    prop_assert_eq!(&s.subset.canary, canary);
                    prop_assert_eq!(&s.subset.job_version, version);
                    prop_assert_eq!(&s.subset.tags, tags);
                }
            }
            (Some(ws), Err(e)) => {
                prop_assert!(ws.is_empty() || ws.iter().all(|w| *w == 0), "{e}");
                let p = &e.problems()[0];
                prop_assert_eq!(p.at.path.as_deref(), Some("spec.splits"), "{}", e);
            }
            (None, Ok(_)) => panic!("a bad weight was accepted:\n{text}"),
            (None, Err(e)) => {
                let p = &e.problems()[0];
                let path = p.at.path.clone().unwrap_or_default();
                prop_assert!(
                    path.starts_with("spec.splits[") && path.ends_with("].weight"),
                    "{}", e
                );
                prop_assert!(p.at.pos.is_some(), "{}", e);
            }
        }
    }
}
