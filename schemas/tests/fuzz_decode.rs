//! Property tests that fuzz the decoders: whatever bytes arrive — random text, or a real
//! manifest with bytes deleted, inserted or cut off — decoding returns a value or an error,
//! never a panic. More cases: `PROPTEST_CASES=20000 cargo test -p caravan-schemas --test fuzz_decode`.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use caravan_schemas::jobspec::{self, VariableInputs};
use proptest::prelude::*;
use std::path::Path;

fn corpus() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, String),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..16).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (
            any::<usize>(),
            prop_oneof![
                Just("{".to_owned()),
                Just("}".to_owned()),
                Just("\"".to_owned()),
                Just("${".to_owned()),
                Just("[".to_owned()),
                Just(":\n  - ".to_owned()),
                Just("<<EOF\n".to_owned()),
                Just("\u{0}".to_owned()),
                Just("%{ if".to_owned()),
                Just("& *a ".to_owned()),
                "\\PC{1,8}",
            ]
        )
            .prop_map(|(a, s)| Mutation::Insert(a, s)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..64).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
    ]
}

fn boundary(s: &str, at: usize) -> usize {
    let mut at = at % (s.len() + 1);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &str, m: &Mutation) -> String {
    match m {
        Mutation::Delete(a, n) => {
            let a = boundary(text, *a);
            let b = boundary(text, a + n);
            if b <= a {
                text.to_owned()
            } else {
                format!("{}{}", &text[..a], &text[b..])
            }
        }
        Mutation::Insert(a, s) => {
            let a = boundary(text, *a);
            format!("{}{s}{}", &text[..a], &text[a..])
        }
        Mutation::Truncate(a) => text[..boundary(text, *a)].to_owned(),
        Mutation::Duplicate(a, n) => {
            let a = boundary(text, *a);
            let b = boundary(text, a + n).max(a);
            format!("{}{}{}", &text[..b], &text[a..b], &text[b..])
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutated_manifests_never_panic(which in any::<usize>(), muts in proptest::collection::vec(mutation(), 1..4)) {
        let corpus = corpus();
        let (name, text) = &corpus[which % corpus.len()];
        let mutated = muts.iter().fold(text.clone(), |t, m| apply(&t, m));
        let _ = jobspec::decode(name, &mutated, &VariableInputs::default());
    }

    #[test]
    fn random_text_never_panics(text in "\\PC{0,200}", ext in prop_oneof![Just("a.hcl"), Just("a.yaml"), Just("a.json"), Just("-")]) {
        let _ = jobspec::decode(ext, &text, &VariableInputs::default());
    }
}
