//! The neutral form every jobspec front-end produces: a JSON value in the jobspec's own shape
//! (snake_case keys; a labelled block is an object keyed by its label; an unlabelled block is an
//! array of objects), plus a [`SourceMap`] that remembers where in the source each value came
//! from, so that an error found later — a count that is not a number, a duration that does not
//! parse — can still name the line and column.

use std::collections::HashMap;
use std::fmt;

/// One step of a path into a [`Tree`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A 1-based line and column in the source text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    /// The line and column (1-based, counted in characters) of a byte offset into `src`.
    pub fn from_offset(src: &str, offset: usize) -> Pos {
        let offset = offset.min(src.len());
        let mut line = 1u32;
        let mut column = 1u32;
        for (i, c) in src.char_indices() {
            if i >= offset {
                break;
            }
            if c == '\n' {
                line += 1;
                column = 1;
            } else {
                column += 1;
            }
        }
        Pos { line, column }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Renders a path as `job.example.group.cache.count` or `constraint[0].operator`.
pub fn display_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Where each value of a [`Tree`] came from.
#[derive(Clone, Debug, Default)]
pub struct SourceMap {
    positions: HashMap<Vec<Seg>, Pos>,
}

impl SourceMap {
    /// Records that the value at `path` starts at `pos`.
    pub fn insert(&mut self, path: Vec<Seg>, pos: Pos) {
        self.positions.insert(path, pos);
    }

    /// The position of the value at `path`, or of its nearest ancestor that has one.
    pub fn lookup(&self, path: &[Seg]) -> Option<Pos> {
        (0..=path.len())
            .rev()
            .find_map(|n| self.positions.get(&path[..n]).copied())
    }

    /// Positions under `prefix`, re-rooted so that `prefix` becomes the empty path.
    pub fn subtree(&self, prefix: &[Seg]) -> SourceMap {
        SourceMap {
            positions: self
                .positions
                .iter()
                .filter(|(p, _)| p.starts_with(prefix))
                .map(|(p, pos)| (p[prefix.len()..].to_vec(), *pos))
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

/// A decoded document: its value and where each part of it came from.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    pub value: serde_json::Value,
    pub source_map: SourceMap,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_columns() {
        let src = "ab\ncd\n\nef";
        assert_eq!(Pos::from_offset(src, 0), Pos { line: 1, column: 1 });
        assert_eq!(Pos::from_offset(src, 4), Pos { line: 2, column: 2 });
        assert_eq!(Pos::from_offset(src, 7), Pos { line: 4, column: 1 });
        assert_eq!(Pos::from_offset(src, 999), Pos { line: 4, column: 3 });
    }

    #[test]
    fn lookup_falls_back_to_the_nearest_ancestor() {
        let mut map = SourceMap::default();
        let k = |s: &str| Seg::Key(s.into());
        map.insert(vec![k("job")], Pos { line: 1, column: 1 });
        map.insert(vec![k("job"), k("x")], Pos { line: 3, column: 5 });
        assert_eq!(
            map.lookup(&[k("job"), k("x"), Seg::Index(2)]),
            Some(Pos { line: 3, column: 5 })
        );
        assert_eq!(
            map.lookup(&[k("job"), k("y")]),
            Some(Pos { line: 1, column: 1 })
        );
        assert_eq!(map.lookup(&[k("other")]), None);
        assert_eq!(
            display_path(&[k("job"), k("x"), Seg::Index(2), k("y")]),
            "job.x[2].y"
        );
    }
}
