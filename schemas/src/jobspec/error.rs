//! Errors from reading a jobspec: each names the file, the line and column (or the path inside
//! the document), and what was expected.

use super::tree::Pos;
use std::fmt;

/// Where a problem is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    /// The file name, or `<stdin>`.
    pub file: Option<String>,
    /// Line and column in that file.
    pub pos: Option<Pos>,
    /// The path to the value inside the document, e.g. `job.example.group.cache.count`.
    pub path: Option<String>,
}

impl fmt::Display for Location {
    /// `file:line:col: path`, leaving out what is unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut place = self.file.clone().unwrap_or_default();
        if let Some(pos) = self.pos {
            if !place.is_empty() {
                place.push(':');
            }
            place.push_str(&pos.to_string());
        }
        match self.path.as_deref().filter(|p| !p.is_empty()) {
            Some(path) if place.is_empty() => f.write_str(path),
            Some(path) => write!(f, "{place}: {path}"),
            None => f.write_str(&place),
        }
    }
}

/// One thing wrong with a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub at: Location,
    pub message: String,
}

impl Problem {
    pub fn new(message: impl Into<String>) -> Self {
        Problem {
            at: Location::default(),
            message: message.into(),
        }
    }

    pub fn at_pos(pos: Option<Pos>, message: impl Into<String>) -> Self {
        Problem {
            at: Location {
                pos,
                ..Location::default()
            },
            message: message.into(),
        }
    }

    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.at.path = Some(path.into());
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.at.to_string();
        if at.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{at}: {}", self.message)
        }
    }
}

/// Why a jobspec could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The text is not well-formed HCL, YAML or JSON.
    #[error("{0}")]
    Syntax(Problem),
    /// The text parsed, but what it says is not a valid job: wrong types, unknown fields,
    /// failed validation. Every problem found is listed.
    #[error("{}", display_all(.0))]
    Invalid(Vec<Problem>),
    /// The file could not be read.
    #[error("{file}: {message}")]
    Io { file: String, message: String },
}

fn display_all(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let mut out = format!("{} errors occurred:", many.len());
            for p in many {
                out.push_str("\n\t* ");
                out.push_str(&p.to_string());
            }
            out
        }
    }
}

impl SpecError {
    /// A syntax error at a position.
    pub fn syntax(pos: Option<Pos>, message: impl Into<String>) -> Self {
        SpecError::Syntax(Problem::at_pos(pos, message))
    }

    /// A single semantic problem at a position.
    pub fn invalid(pos: Option<Pos>, message: impl Into<String>) -> Self {
        SpecError::Invalid(vec![Problem::at_pos(pos, message)])
    }

    /// The problems, whatever the kind.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            SpecError::Syntax(p) => vec![p.clone()],
            SpecError::Invalid(ps) => ps.clone(),
            SpecError::Io { file, message } => vec![Problem {
                at: Location {
                    file: Some(file.clone()),
                    ..Location::default()
                },
                message: message.clone(),
            }],
        }
    }

    /// Names the file every problem is in.
    pub fn in_file(self, file: &str) -> Self {
        let name = |mut p: Problem| {
            p.at.file.get_or_insert_with(|| file.to_owned());
            p
        };
        match self {
            SpecError::Syntax(p) => SpecError::Syntax(name(p)),
            SpecError::Invalid(ps) => SpecError::Invalid(ps.into_iter().map(name).collect()),
            io @ SpecError::Io { .. } => io,
        }
    }
}
