//! Keeping what templates and artifacts write inside the task directory: paths are resolved
//! lexically against the task directory and then followed through existing symlinks as the
//! kernel would, and anything that lands outside is refused.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// Why a path was refused.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{path:?} escapes the task directory")]
    Escapes { path: String },
    #[error("{path:?} leads out of the task directory through the symlink {link:?}")]
    SymlinkOut { path: String, link: String },
    #[error("{path:?} passes through too many symlinks")]
    SymlinkLoop { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What an absolute path means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absolute {
    /// Allowed only when it is inside the task directory (artifact destinations, template
    /// sources).
    InsideOnly,
    /// Inside the task directory as is; anything else is taken relative to the task
    /// directory, as Nomad joins template destinations (`/local/x` is `<task>/local/x`).
    Rebase,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The task directory as the kernel names it (symlinks in its own path resolved).
pub fn canonical_root(task_dir: &Path) -> Result<PathBuf, SandboxError> {
    std::fs::canonicalize(task_dir).map_err(io_err(task_dir))
}

/// `path` (relative to `root`, or absolute per `abs`) as a normalized path under `root`,
/// or an error when `..` climbs out. `root` must be canonical; `alias` is the task directory
/// as the task's environment names it (an absolute path under it is inside too).
pub fn resolve(
    root: &Path,
    alias: &Path,
    path: &str,
    abs: Absolute,
) -> Result<PathBuf, SandboxError> {
    let escapes = || SandboxError::Escapes {
        path: path.to_owned(),
    };
    let p = Path::new(path);
    let rel: PathBuf = if p.is_absolute() {
        match p.strip_prefix(root).or_else(|_| p.strip_prefix(alias)) {
            Ok(inside) => inside.to_path_buf(),
            Err(_) if abs == Absolute::Rebase => p.components().skip(1).collect(),
            Err(_) => return Err(escapes()),
        }
    } else {
        p.to_path_buf()
    };
    let mut parts: Vec<OsString> = Vec::new();
    for c in rel.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(escapes());
                }
            }
            Component::Normal(n) => parts.push(n.to_owned()),
            Component::RootDir | Component::Prefix(_) => return Err(escapes()),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(parts);
    Ok(out)
}

/// Follows `path` (under the canonical `root`) component by component, through the
/// symlinks that exist, and fails if any step leaves `root`.
pub fn check_real(root: &Path, path: &Path) -> Result<(), SandboxError> {
    let shown = || path.display().to_string();
    let rel = path
        .strip_prefix(root)
        .map_err(|_| SandboxError::Escapes { path: shown() })?;
    let mut todo: VecDeque<OsString> = VecDeque::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => todo.push_back(n.to_owned()),
            Component::ParentDir => todo.push_back("..".into()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(SandboxError::Escapes { path: shown() });
            }
        }
    }
    let mut at: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(part) = todo.pop_front() {
        if part == "." {
            continue;
        }
        if part == ".." {
            if at.pop().is_none() {
                return Err(SandboxError::Escapes { path: shown() });
            }
            continue;
        }
        at.push(part);
        let mut here = root.to_path_buf();
        here.extend(&at);
        let Ok(meta) = std::fs::symlink_metadata(&here) else {
            continue;
        };
        if !meta.file_type().is_symlink() {
            continue;
        }
        hops += 1;
        if hops > 40 {
            return Err(SandboxError::SymlinkLoop { path: shown() });
        }
        let target = std::fs::read_link(&here).map_err(io_err(&here))?;
        at.pop();
        let out = || SandboxError::SymlinkOut {
            path: shown(),
            link: here.display().to_string(),
        };
        let target_rel: PathBuf = if target.is_absolute() {
            at.clear();
            target.strip_prefix(root).map_err(|_| out())?.to_path_buf()
        } else {
            target
        };
        let mut front: Vec<OsString> = Vec::new();
        for c in target_rel.components() {
            match c {
                Component::Normal(n) => front.push(n.to_owned()),
                Component::ParentDir => front.push("..".into()),
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => return Err(out()),
            }
        }
        for part in front.into_iter().rev() {
            todo.push_front(part);
        }
    }
    Ok(())
}

/// Creates `dir` (under the canonical `root`) and its parents, refusing to pass through a
/// symlink that leads out.
pub fn create_dirs(root: &Path, dir: &Path) -> Result<(), SandboxError> {
    check_real(root, dir)?;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    check_real(root, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_task_dir() {
        let dir = tempfile::tempdir().unwrap();
        let root = canonical_root(dir.path()).unwrap();
        let r = |p: &str, a| resolve(&root, dir.path(), p, a);
        assert_eq!(
            r("local/a.conf", Absolute::InsideOnly).unwrap(),
            root.join("local/a.conf")
        );
        assert_eq!(
            r("local/../secrets/x", Absolute::InsideOnly).unwrap(),
            root.join("secrets/x")
        );
        assert!(matches!(
            r("../x", Absolute::InsideOnly),
            Err(SandboxError::Escapes { .. })
        ));
        assert!(matches!(
            r("local/../../x", Absolute::Rebase),
            Err(SandboxError::Escapes { .. })
        ));
        assert!(matches!(
            r("/etc/passwd", Absolute::InsideOnly),
            Err(SandboxError::Escapes { .. })
        ));
        assert_eq!(
            r("/local/x", Absolute::Rebase).unwrap(),
            root.join("local/x")
        );
        let inside = root.join("local/y").display().to_string();
        assert_eq!(
            r(&inside, Absolute::InsideOnly).unwrap(),
            root.join("local/y")
        );
    }

    #[test]
    fn symlinks_that_lead_out_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = canonical_root(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("local/sub")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("local/abs")).unwrap();
        std::os::unix::fs::symlink("../..", root.join("local/up")).unwrap();
        std::os::unix::fs::symlink("sub", root.join("local/ok")).unwrap();
        std::os::unix::fs::symlink(".", root.join("local/sub/self")).unwrap();
        assert!(check_real(&root, &root.join("local/ok/x")).is_ok());
        assert!(check_real(&root, &root.join("local/sub/self/self/x")).is_ok());
        for bad in [
            "local/abs/passwd",
            "local/up/x",
            "local/sub/self/../../../x",
        ] {
            let err = check_real(&root, &root.join(bad)).unwrap_err();
            assert!(
                matches!(
                    err,
                    SandboxError::SymlinkOut { .. } | SandboxError::Escapes { .. }
                ),
                "{bad}: {err}"
            );
        }
        assert!(create_dirs(&root, &root.join("local/abs/new")).is_err());
        assert!(!Path::new("/etc/new").exists());
    }
}
