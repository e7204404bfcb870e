//! Nomad's `template` block: renders consul-template's dialect of Go's `text/template` into
//! files in the task directory before the task starts.
//!
//! - [`render_text`] parses and runs one template's text (with its delimiters), fetching the
//!   services `nomadService` asks for from a [`TemplateSource`];
//! - [`render_all`] renders a task's templates: it reads `source` files, writes `destination`
//!   files (confined to the task directory, with `perms` and, as root, `uid`/`gid`) and returns
//!   the variables of `env = true` templates;
//! - [`read_env`] reads those variables back from already rendered files (a task restarted
//!   after an agent restart); [`parse_env_file`] is the `KEY=value` format they use.
//!
//! `${NOMAD_*}`, `${attr.*}`, `${meta.*}` are interpolated in `source` and `destination`, not in
//! the template text (which reads the task's environment through `env "NAME"`).

mod exec;
mod funcs;
mod parse;
mod source;

pub use source::{FixedServices, ServerServices, ServiceInstance, SourceError, TemplateSource};

use super::env;
use super::sandbox::{self, Absolute, SandboxError};
use caravan_schemas::job::Template;
use caravan_schemas::node::Node;
use exec::{Lookup, Object, Options, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::path::Path;

/// The largest template `source` file read.
const MAX_SOURCE_BYTES: u64 = 16 << 20;
/// How many times a template is re-run to fetch services it discovers as it runs.
const MAX_ROUNDS: usize = 8;

/// Why a template could not be rendered. `name` is the template's destination as written.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {name:?}: {line}:{col}: {msg}")]
    Parse {
        name: String,
        line: usize,
        col: usize,
        msg: String,
    },
    #[error("template {name:?}: {line}:{col}: executing: {msg}")]
    Execute {
        name: String,
        line: usize,
        col: usize,
        msg: String,
    },
    #[error("template {name:?}: {source}")]
    Services {
        name: String,
        #[source]
        source: SourceError,
    },
    #[error("template {name:?}: it keeps discovering new services to look up; giving up")]
    TooManyRounds { name: String },
    #[error("template {name:?}: has both `data` and `source`; give one")]
    DataAndSource { name: String },
    #[error("template {name:?}: has neither `data` nor `source`")]
    NoData { name: String },
    #[error("template {name:?}: {what}: {source}")]
    Path {
        name: String,
        what: &'static str,
        #[source]
        source: SandboxError,
    },
    #[error("template {name:?}: reading source {path}: {message}")]
    ReadSource {
        name: String,
        path: String,
        message: String,
    },
    #[error("template {name:?}: writing {path}: {source}")]
    Write {
        name: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("template {name:?}: perms {perms:?} is not an octal file mode like \"0644\"")]
    Perms { name: String, perms: String },
    #[error("template {name:?}: setting the owner of {path}: {message}")]
    Owner {
        name: String,
        path: String,
        message: String,
    },
    #[error("template {name:?}: env file {path}: line {line}: {msg}")]
    EnvFile {
        name: String,
        path: String,
        line: usize,
        msg: String,
    },
}

/// 1-based line and column (in characters) of byte offset `pos` in `src`.
fn line_col(src: &str, pos: usize) -> (usize, usize) {
    let mut pos = pos.min(src.len());
    while !src.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &src[..pos];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before, |i| &before[i + 1..])
        .chars()
        .count()
        + 1;
    (line, col)
}

/// A template's text with its delimiters, ready to run.
#[derive(Debug, Clone)]
pub struct Parsed {
    name: String,
    src: String,
    nodes: Vec<parse::Node>,
}

/// Parses template text; empty delimiters mean `{{` and `}}`.
pub fn parse(name: &str, text: &str, left: &str, right: &str) -> Result<Parsed, TemplateError> {
    let left = if left.is_empty() { "{{" } else { left };
    let right = if right.is_empty() { "}}" } else { right };
    match parse::parse(text, left, right) {
        Ok(nodes) => Ok(Parsed {
            name: name.to_owned(),
            src: text.to_owned(),
            nodes,
        }),
        Err(e) => {
            let (line, col) = line_col(text, e.pos);
            Err(TemplateError::Parse {
                name: name.to_owned(),
                line,
                col,
                msg: e.msg,
            })
        }
    }
}

/// What a template reads while it runs.
#[derive(Debug, Clone, Copy)]
pub struct Data<'a> {
    /// The task's environment (`env "NAME"`); nothing else of the agent's is visible.
    pub env: &'a BTreeMap<String, String>,
    /// The job's namespace, where `nomadService` looks.
    pub namespace: &'a str,
    pub source: &'a dyn TemplateSource,
    /// `error_on_missing_key`.
    pub err_missing_key: bool,
}

/// One run of a template against the services fetched so far; asks for the rest.
struct Round<'a> {
    env: &'a BTreeMap<String, String>,
    known: &'a HashMap<String, Vec<ServiceInstance>>,
    missing: RefCell<BTreeSet<String>>,
}

/// `nomadService "[tag.]name"`.
fn service_query(q: &str) -> Result<(Option<&str>, &str), String> {
    let (tag, name) = match q.rsplit_once('.') {
        Some((tag, name)) => (Some(tag), name),
        None => (None, q),
    };
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok || tag.is_some_and(str::is_empty) {
        return Err(format!(
            "invalid service query {q:?}: expected \"name\" or \"tag.name\" (names are letters, digits, '-' and '_')"
        ));
    }
    Ok((tag, name))
}

fn instance_value(s: &ServiceInstance) -> Value {
    let st = |v: &str| Value::Str(v.to_owned());
    Value::Object(Object {
        type_name: "*NomadService",
        fields: vec![
            ("ID", st(&s.id)),
            ("Name", st(&s.name)),
            ("Namespace", st(&s.namespace)),
            ("Node", st(&s.node_id)),
            ("Datacenter", st(&s.datacenter)),
            ("JobID", st(&s.job_id)),
            ("AllocID", st(&s.alloc_id)),
            ("Tags", Value::List(s.tags.iter().map(|t| st(t)).collect())),
            ("Address", st(&s.address)),
            ("Port", Value::Int(i64::from(s.port))),
        ],
    })
}

impl Lookup for Round<'_> {
    fn env(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }

    fn nomad_service(&self, query: &str) -> Result<Vec<Value>, String> {
        let (tag, name) = service_query(query)?;
        let Some(list) = self.known.get(name) else {
            self.missing.borrow_mut().insert(name.to_owned());
            return Ok(Vec::new());
        };
        Ok(list
            .iter()
            .filter(|s| tag.is_none_or(|t| s.tags.iter().any(|x| x == t)))
            .map(instance_value)
            .collect())
    }
}

impl Parsed {
    /// Runs the template, fetching the services it asks for (a service nobody registered
    /// ranges over nothing).
    pub async fn render(&self, data: &Data<'_>) -> Result<String, TemplateError> {
        self.render_tracked(data).await.map(|(out, _)| out)
    }

    /// [`Parsed::render`], also returning the names of the services the template read (what
    /// to watch for changes).
    pub async fn render_tracked(
        &self,
        data: &Data<'_>,
    ) -> Result<(String, BTreeSet<String>), TemplateError> {
        let mut known: HashMap<String, Vec<ServiceInstance>> = HashMap::new();
        for _ in 0..MAX_ROUNDS {
            let (out, missing) = {
                let round = Round {
                    env: data.env,
                    known: &known,
                    missing: RefCell::new(BTreeSet::new()),
                };
                let opts = Options {
                    lookup: &round,
                    err_missing_key: data.err_missing_key,
                };
                let out = exec::execute(&self.nodes, &opts);
                (out, round.missing.into_inner())
            };
            if missing.is_empty() {
                let out = out.map_err(|e| {
                    let (line, col) = line_col(&self.src, e.pos);
                    TemplateError::Execute {
                        name: self.name.clone(),
                        line,
                        col,
                        msg: e.msg,
                    }
                })?;
                return Ok((out, known.into_keys().collect()));
            }
            // Fetch what this round asked for, then run again with it (consul-template's way:
            // a template discovers its dependencies by running).
            for name in missing {
                let found =
                    data.source
                        .services(data.namespace, &name)
                        .await
                        .map_err(|source| TemplateError::Services {
                            name: self.name.clone(),
                            source,
                        })?;
                known.insert(name, found);
            }
        }
        Err(TemplateError::TooManyRounds {
            name: self.name.clone(),
        })
    }
}

/// Parses and renders one template text.
pub async fn render_text(
    name: &str,
    text: &str,
    left: &str,
    right: &str,
    data: &Data<'_>,
) -> Result<String, TemplateError> {
    parse(name, text, left, right)?.render(data).await
}

/// Where a task's templates are rendered and what they read.
#[derive(Debug, Clone, Copy)]
pub struct TaskContext<'a> {
    pub task_dir: &'a Path,
    /// The task's environment: `env "…"` reads it and `${…}` in paths is interpolated from it.
    pub env: &'a BTreeMap<String, String>,
    pub node: &'a Node,
    pub namespace: &'a str,
    pub source: &'a dyn TemplateSource,
}

fn template_name(t: &Template) -> String {
    if t.dest_path.is_empty() {
        t.source_path.clone()
    } else {
        t.dest_path.clone()
    }
}

/// One template rendered, not yet written.
struct Rendered {
    name: String,
    root: std::path::PathBuf,
    dest: std::path::PathBuf,
    out: String,
    services: BTreeSet<String>,
}

/// Reads a template's text, renders it, and works out where it goes.
async fn render_one(t: &Template, cx: &TaskContext<'_>) -> Result<Rendered, TemplateError> {
    let name = template_name(t);
    let path_err = |what: &'static str| {
        let name = name.clone();
        move |source| TemplateError::Path { name, what, source }
    };
    let root = sandbox::canonical_root(cx.task_dir).map_err(path_err("task directory"))?;
    let text = match (t.embedded_tmpl.is_empty(), t.source_path.is_empty()) {
        (false, false) => return Err(TemplateError::DataAndSource { name }),
        (true, true) => return Err(TemplateError::NoData { name }),
        (false, true) => t.embedded_tmpl.clone(),
        (true, false) => {
            let src = env::interpolate(&t.source_path, cx.env, cx.node);
            let path = sandbox::resolve(&root, cx.task_dir, &src, Absolute::InsideOnly)
                .map_err(path_err("source"))?;
            sandbox::check_real(&root, &path).map_err(path_err("source"))?;
            read_source(&name, &path)?
        }
    };
    let dest = env::interpolate(&t.dest_path, cx.env, cx.node);
    let dest = sandbox::resolve(&root, cx.task_dir, &dest, Absolute::Rebase)
        .map_err(path_err("destination"))?;
    let data = Data {
        env: cx.env,
        namespace: cx.namespace,
        source: cx.source,
        err_missing_key: t.err_missing_key,
    };
    let (out, services) = parse(&name, &text, &t.left_delim, &t.right_delim)?
        .render_tracked(&data)
        .await?;
    Ok(Rendered {
        name,
        root,
        dest,
        out,
        services,
    })
}

impl Rendered {
    fn write(&self, t: &Template) -> Result<(), TemplateError> {
        let mode = parse_perms(&self.name, &t.perms)?;
        write_file(
            &self.name,
            &self.root,
            &self.dest,
            self.out.as_bytes(),
            mode,
            t.uid,
            t.gid,
        )
    }
}

/// Renders every template into the task directory, in order; returns the variables of the
/// `env = true` ones (later templates win).
pub async fn render_all(
    templates: &[Template],
    cx: &TaskContext<'_>,
) -> Result<BTreeMap<String, String>, TemplateError> {
    let mut vars = BTreeMap::new();
    for t in templates {
        let r = render_one(t, cx).await?;
        r.write(t)?;
        if t.envvars {
            let parsed = parse_env_file(&r.out).map_err(|(line, msg)| TemplateError::EnvFile {
                name: r.name.clone(),
                path: r.dest.display().to_string(),
                line,
                msg,
            })?;
            vars.extend(parsed);
        }
    }
    Ok(vars)
}

/// What [`rerender_all`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rerendered {
    /// Indexes (into the task's templates) of those whose file changed.
    pub changed: Vec<usize>,
    /// The services the templates read: what to watch.
    pub services: BTreeSet<String>,
}

/// Renders every template again and rewrites the files whose content changed (a file that is
/// missing counts as changed). Used while the task runs, when the services templates read
/// change; the task's `change_mode` then decides what happens to it.
pub async fn rerender_all(
    templates: &[Template],
    cx: &TaskContext<'_>,
) -> Result<Rerendered, TemplateError> {
    let mut result = Rerendered::default();
    for (i, t) in templates.iter().enumerate() {
        let r = render_one(t, cx).await?;
        result.services.extend(r.services.iter().cloned());
        let same = std::fs::read(&r.dest).is_ok_and(|old| old == r.out.as_bytes());
        if !same {
            r.write(t)?;
            result.changed.push(i);
        }
    }
    Ok(result)
}

/// The variables of the task's `env = true` templates, read from their rendered files.
pub fn read_env(
    templates: &[Template],
    cx: &TaskContext<'_>,
) -> Result<BTreeMap<String, String>, TemplateError> {
    let mut vars = BTreeMap::new();
    for t in templates.iter().filter(|t| t.envvars) {
        let name = template_name(t);
        let path_err = |source| TemplateError::Path {
            name: name.clone(),
            what: "destination",
            source,
        };
        let root = sandbox::canonical_root(cx.task_dir).map_err(path_err)?;
        let dest = env::interpolate(&t.dest_path, cx.env, cx.node);
        let dest =
            sandbox::resolve(&root, cx.task_dir, &dest, Absolute::Rebase).map_err(path_err)?;
        sandbox::check_real(&root, &dest).map_err(path_err)?;
        let text = read_source(&name, &dest)?;
        let parsed = parse_env_file(&text).map_err(|(line, msg)| TemplateError::EnvFile {
            name: name.clone(),
            path: dest.display().to_string(),
            line,
            msg,
        })?;
        vars.extend(parsed);
    }
    Ok(vars)
}

fn read_source(name: &str, path: &Path) -> Result<String, TemplateError> {
    use std::io::Read as _;
    let fail = |message: String| TemplateError::ReadSource {
        name: name.to_owned(),
        path: path.display().to_string(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_SOURCE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_SOURCE_BYTES {
        return Err(fail(format!("larger than {} MiB", MAX_SOURCE_BYTES >> 20)));
    }
    String::from_utf8(bytes).map_err(|_| fail("not UTF-8 text".into()))
}

fn parse_perms(name: &str, perms: &str) -> Result<u32, TemplateError> {
    if perms.is_empty() {
        return Ok(0o644);
    }
    u32::from_str_radix(perms, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| TemplateError::Perms {
            name: name.to_owned(),
            perms: perms.to_owned(),
        })
}

/// Writes `bytes` to `dest` atomically (a temporary file renamed over it, so a symlink at
/// `dest` is replaced, not followed).
fn write_file(
    name: &str,
    root: &Path,
    dest: &Path,
    bytes: &[u8],
    mode: u32,
    uid: Option<i32>,
    gid: Option<i32>,
) -> Result<(), TemplateError> {
    use std::os::unix::fs::PermissionsExt as _;
    let path_err = |source| TemplateError::Path {
        name: name.to_owned(),
        what: "destination",
        source,
    };
    let write_err = |source| TemplateError::Write {
        name: name.to_owned(),
        path: dest.display().to_string(),
        source,
    };
    let parent = dest.parent().unwrap_or(root);
    sandbox::create_dirs(root, parent).map_err(path_err)?;
    let mut tmp = tempfile::NamedTempFile::new_in(parent).map_err(write_err)?;
    tmp.write_all(bytes).map_err(write_err)?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))
        .map_err(write_err)?;
    let (uid, gid) = (uid.filter(|u| *u >= 0), gid.filter(|g| *g >= 0));
    if (uid.is_some() || gid.is_some()) && nix::unistd::Uid::effective().is_root() {
        nix::unistd::chown(
            tmp.path(),
            uid.map(|u| nix::unistd::Uid::from_raw(u.unsigned_abs())),
            gid.map(|g| nix::unistd::Gid::from_raw(g.unsigned_abs())),
        )
        .map_err(|e| TemplateError::Owner {
            name: name.to_owned(),
            path: dest.display().to_string(),
            message: e.to_string(),
        })?;
    }
    tmp.persist(dest).map_err(|e| write_err(e.error))?;
    Ok(())
}

/// Parses an env file as Nomad does (go-envparse): `KEY=value` lines, an optional `export `,
/// blank lines and `#` comment lines skipped; values may be single-quoted (literal) or
/// double-quoted (`\"`, `\\`, `\n`, `\t` escapes); an unquoted `#` starts a comment.
/// Errors are (1-based line, message).
pub fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, (usize, String)> {
    let mut vars = BTreeMap::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line_no = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err((line_no, "missing \"=\"".into()));
        };
        let key = key.trim();
        let key = key.strip_prefix("export ").map_or(key, str::trim_start);
        let mut chars = key.chars();
        match chars.next() {
            None => return Err((line_no, "empty key".into())),
            Some(c) if c == '_' || c.is_ascii_alphabetic() => {}
            Some(c) => {
                return Err((
                    line_no,
                    format!("key must start with [A-Za-z_] but found {c:?}"),
                ));
            }
        }
        if let Some(c) = chars.find(|c| !(*c == '_' || c.is_ascii_alphanumeric())) {
            return Err((
                line_no,
                format!("key characters must be [A-Za-z0-9_] but found {c:?}"),
            ));
        }
        vars.insert(
            key.to_owned(),
            env_value(value.trim()).map_err(|m| (line_no, m))?,
        );
    }
    Ok(vars)
}

fn env_value(value: &str) -> Result<String, String> {
    #[derive(PartialEq)]
    enum Mode {
        Normal,
        Double,
        Single,
        Escape,
    }
    let mut out = String::with_capacity(value.len());
    // Length of `out` up to its last significant character (to trim before a comment).
    let mut sig = 0;
    let mut mode = Mode::Normal;
    for c in value.chars() {
        if c.is_control() && c != '\t' {
            return Err(format!(
                "{:#04x} is an invalid value character",
                u32::from(c)
            ));
        }
        match mode {
            Mode::Normal => match c {
                '"' => mode = Mode::Double,
                '\'' => mode = Mode::Single,
                '#' => {
                    out.truncate(sig);
                    return Ok(out);
                }
                ' ' | '\t' => out.push(c),
                c => {
                    out.push(c);
                    sig = out.len();
                }
            },
            Mode::Double => match c {
                '"' => mode = Mode::Normal,
                '\\' => mode = Mode::Escape,
                c => {
                    out.push(c);
                    sig = out.len();
                }
            },
            Mode::Escape => {
                out.push(match c {
                    '"' => '"',
                    '\\' => '\\',
                    'n' => '\n',
                    't' => '\t',
                    other => return Err(format!("invalid escape sequence: {other}")),
                });
                sig = out.len();
                mode = Mode::Double;
            }
            Mode::Single => match c {
                '\'' => mode = Mode::Normal,
                c => {
                    out.push(c);
                    sig = out.len();
                }
            },
        }
    }
    match mode {
        Mode::Normal => Ok(out),
        Mode::Double => Err("unmatched \"".into()),
        Mode::Single => Err("unmatched '".into()),
        Mode::Escape => Err("incomplete escape sequence".into()),
    }
}

#[cfg(test)]
mod tests;
