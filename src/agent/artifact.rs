//! Nomad's `artifact` block: fetches a file into the task directory before the task starts,
//! the way go-getter does for the sources Nomad job files use.
//!
//! - Sources: `http://…` URLs (with `headers`), `file://…` URLs and absolute local paths (a
//!   file or a directory). go-getter's `http::`/`file::` prefixes are accepted; other getters
//!   (git, s3, gcs, hg) are refused by name.
//! - Options (also taken from the URL's query, as go-getter does): `checksum` (`sha256:…`,
//!   `sha512:…`, `sha1:…`, `md5:…`, or bare hex whose length says which), verified before
//!   anything is unpacked; `archive` (`false` to keep an archive as is, or `tar`, `tar.gz`,
//!   `tgz`, `zip`, `gz` to say what it is when the name does not).
//! - Mode `any` (default) unpacks archives into the destination directory and puts other files
//!   in it under their own name; `file` writes the destination path itself; `dir` needs an
//!   archive or a directory.
//! - Nothing lands outside the task directory: the destination must be inside it, and archive
//!   entries that are absolute or climb out with `..`, hard links out, and symlinks that lead
//!   out (followed as the kernel would) are refused. Downloads have a deadline and size,
//!   unpacking a size and a file count ([`Limits`]).

use super::env;
use super::sandbox::{self, Absolute, SandboxError};
use caravan_schemas::job::TaskArtifact;
use caravan_schemas::node::Node;
use sha2::digest::DynDigest;
use std::collections::BTreeMap;
use std::io::{Read, Write as _};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Why an artifact could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("unsupported source {source_url:?}: {why}")]
    Unsupported { source_url: String, why: String },
    #[error("GET {url}: {message}")]
    Http { url: String, message: String },
    #[error("reading {path}: {source}")]
    Local {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("fetching took longer than {0:?}")]
    Timeout(Duration),
    #[error("the download is larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("invalid checksum {spec:?}: {why}")]
    BadChecksum { spec: String, why: String },
    #[error("checksum mismatch: expected {kind}:{expected}, got {kind}:{actual}")]
    ChecksumMismatch {
        kind: &'static str,
        expected: String,
        actual: String,
    },
    #[error("invalid option archive = {0:?}: expected false, tar, tar.gz, tgz, zip or gz")]
    BadArchiveOption(String),
    #[error("{0}")]
    Mode(String),
    #[error("destination: {0}")]
    Destination(#[source] SandboxError),
    #[error("archive entry {entry:?}: {why}")]
    Entry { entry: String, why: String },
    #[error("reading the archive: {0}")]
    Archive(String),
    #[error("the archive holds more than {0} files")]
    TooManyFiles(u64),
    #[error("the unpacked contents are larger than the {0}-byte limit")]
    UnpackedTooLarge(u64),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Bounds on one artifact (Nomad's client `artifact` block defaults).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The whole fetch, download and copy (Nomad's `http_read_timeout`, 30m).
    pub timeout: Duration,
    /// Bytes downloaded or copied (Nomad's `http_max_size`, 100GB).
    pub max_download: u64,
    /// Bytes unpacked from an archive (`decompression_size_limit`, 100GB).
    pub max_unpacked: u64,
    /// Entries unpacked from an archive (`decompression_file_count_limit`, 4096).
    pub max_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(30 * 60),
            max_download: 100_000_000_000,
            max_unpacked: 100_000_000_000,
            max_files: 4096,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArchiveKind {
    Tar,
    TarGz,
    Zip,
    Gz,
}

/// What an archive is, from its name (go-getter's extensions), `Err` with the extension
/// when it is an archive Caravan cannot unpack.
fn archive_from_name(path: &str) -> Result<Option<ArchiveKind>, String> {
    let p = path.to_ascii_lowercase();
    for (ext, kind) in [
        (".tar.gz", ArchiveKind::TarGz),
        (".tgz", ArchiveKind::TarGz),
        (".tar", ArchiveKind::Tar),
        (".zip", ArchiveKind::Zip),
    ] {
        if p.ends_with(ext) {
            return Ok(Some(kind));
        }
    }
    for ext in [
        ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tzst", ".bz2", ".xz", ".zst",
    ] {
        if p.ends_with(ext) {
            return Err(ext.to_owned());
        }
    }
    Ok(p.ends_with(".gz").then_some(ArchiveKind::Gz))
}

fn archive_from_option(v: &str) -> Result<Option<ArchiveKind>, ArtifactError> {
    Ok(Some(match v {
        "false" => return Ok(None),
        "tar" => ArchiveKind::Tar,
        "tar.gz" | "tgz" => ArchiveKind::TarGz,
        "zip" => ArchiveKind::Zip,
        "gz" => ArchiveKind::Gz,
        other => return Err(ArtifactError::BadArchiveOption(other.to_owned())),
    }))
}

/// A `checksum` option.
struct Checksum {
    kind: &'static str,
    expected: Vec<u8>,
}

impl Checksum {
    fn parse(spec: &str) -> Result<Checksum, ArtifactError> {
        let bad = |why: &str| ArtifactError::BadChecksum {
            spec: spec.to_owned(),
            why: why.to_owned(),
        };
        let (kind, hex) = match spec.split_once(':') {
            Some(("file", _)) => {
                return Err(bad("checksum files are not supported; give the value"));
            }
            Some((k, h)) => (k.to_ascii_lowercase(), h),
            None => {
                let kind = match spec.len() {
                    32 => "md5",
                    40 => "sha1",
                    64 => "sha256",
                    128 => "sha512",
                    _ => {
                        return Err(bad(
                            "give it as type:value (sha256:…, sha512:…, sha1:…, md5:…)",
                        ));
                    }
                };
                (kind.to_owned(), spec)
            }
        };
        let (kind, len): (&'static str, usize) = match kind.as_str() {
            "md5" => ("md5", 16),
            "sha1" => ("sha1", 20),
            "sha256" => ("sha256", 32),
            "sha512" => ("sha512", 64),
            _ => return Err(bad("unknown type; use sha256, sha512, sha1 or md5")),
        };
        let expected = decode_hex(hex).ok_or_else(|| bad("the value is not hexadecimal"))?;
        if expected.len() != len {
            return Err(bad(&format!(
                "a {kind} checksum is {} hex digits, this has {}",
                len * 2,
                hex.len()
            )));
        }
        Ok(Checksum { kind, expected })
    }

    fn hasher(&self) -> Box<dyn DynDigest + Send> {
        match self.kind {
            "md5" => Box::new(md5::Md5::default()),
            "sha1" => Box::new(sha1::Sha1::default()),
            "sha512" => Box::new(sha2::Sha512::default()),
            _ => Box::new(sha2::Sha256::default()),
        }
    }

    fn verify(&self, actual: &[u8]) -> Result<(), ArtifactError> {
        if actual == self.expected.as_slice() {
            Ok(())
        } else {
            Err(ArtifactError::ChecksumMismatch {
                kind: self.kind,
                expected: encode_hex(&self.expected),
                actual: encode_hex(actual),
            })
        }
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn encode_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Where an artifact comes from.
enum Source {
    Http(reqwest::Url),
    Local(PathBuf),
}

/// Splits go-getter's source string into where to fetch and the options its query carries.
fn parse_source(
    raw: &str,
    options: &mut BTreeMap<String, String>,
) -> Result<(Source, String), ArtifactError> {
    let unsupported = |why: String| ArtifactError::Unsupported {
        source_url: raw.to_owned(),
        why,
    };
    let mut s = raw.trim();
    if let Some((getter, rest)) = s.split_once("::")
        && !getter.contains('/')
    {
        match getter {
            "http" | "https" | "file" => s = rest,
            other => {
                return Err(unsupported(format!(
                    "the {other:?} getter is not supported; use an http:// URL, a file:// URL or an absolute path"
                )));
            }
        }
    }
    let take_options = |url: &mut reqwest::Url, options: &mut BTreeMap<String, String>| {
        let mut kept = Vec::new();
        for (k, v) in url.query_pairs() {
            if k == "checksum" || k == "archive" {
                options
                    .entry(k.into_owned())
                    .or_insert_with(|| v.into_owned());
            } else {
                kept.push((k.into_owned(), v.into_owned()));
            }
        }
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
    };
    let lower = s.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("file://")
    {
        let mut url = reqwest::Url::parse(s).map_err(|e| unsupported(format!("not a URL: {e}")))?;
        take_options(&mut url, options);
        let name = url
            .path_segments()
            .and_then(|mut segs| segs.next_back().map(str::to_owned))
            .unwrap_or_default();
        return match url.scheme() {
            "https" => Err(unsupported(
                "https sources need TLS, which this build of Caravan does not include; serve the artifact over http or from a local path".into(),
            )),
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|()| unsupported("a file:// URL needs an absolute local path".into()))?;
                Ok((Source::Local(path), name))
            }
            _ => Ok((Source::Http(url), name)),
        };
    }
    if s.starts_with('/') {
        let (path, query) = s.split_once('?').unwrap_or((s, ""));
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == "checksum" || k == "archive" {
                options.entry(k.to_owned()).or_insert_with(|| v.to_owned());
            }
        }
        let name = Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok((Source::Local(PathBuf::from(path)), name));
    }
    Err(unsupported(
        "use an http:// URL, a file:// URL or an absolute local path".into(),
    ))
}

/// Fetches artifacts with shared limits and an HTTP client.
#[derive(Debug, Clone)]
pub struct Fetcher {
    http: reqwest::Client,
    limits: Limits,
}

impl Fetcher {
    pub fn new(limits: Limits) -> Result<Fetcher, ArtifactError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ArtifactError::Http {
                url: String::new(),
                message: e.to_string(),
            })?;
        Ok(Fetcher { http, limits })
    }

    /// Fetches one artifact into `task_dir`; `env` and `node` fill in `${…}` in its source,
    /// options, headers and destination.
    pub async fn fetch(
        &self,
        artifact: &TaskArtifact,
        task_dir: &Path,
        env: &BTreeMap<String, String>,
        node: &Node,
    ) -> Result<(), ArtifactError> {
        let interp = |s: &str| env::interpolate(s, env, node);
        let mut options: BTreeMap<String, String> = artifact
            .getter_options
            .iter()
            .map(|(k, v)| (k.clone(), interp(v)))
            .collect();
        let headers: Vec<(String, String)> = artifact
            .getter_headers
            .iter()
            .map(|(k, v)| (k.clone(), interp(v)))
            .collect();
        let (source, name) = parse_source(&interp(&artifact.getter_source), &mut options)?;
        let mode = match artifact.getter_mode.as_str() {
            "" | "any" => "any",
            m @ ("file" | "dir") => m,
            other => {
                return Err(ArtifactError::Mode(format!(
                    "mode {other:?} is not one of any, file, dir"
                )));
            }
        };
        let dest = if artifact.relative_dest.is_empty() {
            "local/".to_owned()
        } else {
            interp(&artifact.relative_dest)
        };
        let root = sandbox::canonical_root(task_dir).map_err(ArtifactError::Destination)?;
        let dest = sandbox::resolve(&root, task_dir, &dest, Absolute::InsideOnly)
            .map_err(ArtifactError::Destination)?;
        let checksum = options
            .get("checksum")
            .filter(|c| !c.is_empty())
            .map(|c| Checksum::parse(c))
            .transpose()?;
        let archive = match options.get("archive") {
            Some(v) if !v.is_empty() => archive_from_option(v)?,
            _ => archive_from_name(&name).map_err(|ext| {
                ArtifactError::Mode(format!(
                    "{ext} archives are not supported; use tar, tar.gz, zip or gz, or set archive = \"false\" to keep the file as it is"
                ))
            })?,
        };
        let limits = self.limits;
        let job = async {
            // A local directory is copied as it is.
            if let Source::Local(path) = &source
                && std::fs::metadata(path).is_ok_and(|m| m.is_dir())
            {
                if mode == "file" {
                    return Err(ArtifactError::Mode(format!(
                        "mode \"file\" needs a file, and {} is a directory",
                        path.display()
                    )));
                }
                if checksum.is_some() {
                    return Err(ArtifactError::Mode(
                        "a checksum needs a file, and the source is a directory".into(),
                    ));
                }
                let (path, root, dest) = (path.clone(), root.clone(), dest.clone());
                return blocking(move || copy_dir(&path, &root, &dest, &limits)).await;
            }
            let mut tmp =
                tempfile::NamedTempFile::new_in(&root).map_err(|e| ArtifactError::Write {
                    path: root.display().to_string(),
                    source: e,
                })?;
            let mut hasher = checksum.as_ref().map(Checksum::hasher);
            let src_mode = match &source {
                Source::Http(url) => {
                    self.download(url, &headers, tmp.as_file_mut(), hasher.as_mut())
                        .await?;
                    0o644
                }
                Source::Local(path) => {
                    copy_local(path, tmp.as_file_mut(), hasher.as_mut(), &limits)?
                }
            };
            if let (Some(c), Some(h)) = (&checksum, hasher) {
                c.verify(&h.finalize())?;
            }
            place(tmp, archive, mode, &name, &root, &dest, src_mode, limits).await
        };
        match tokio::time::timeout(limits.timeout, job).await {
            Ok(r) => r,
            Err(_) => Err(ArtifactError::Timeout(limits.timeout)),
        }
    }

    async fn download(
        &self,
        url: &reqwest::Url,
        headers: &[(String, String)],
        out: &mut std::fs::File,
        mut hasher: Option<&mut Box<dyn DynDigest + Send>>,
    ) -> Result<(), ArtifactError> {
        let shown = url.to_string();
        let fail = |message: String| ArtifactError::Http {
            url: shown.clone(),
            message,
        };
        let mut req = self.http.get(url.clone());
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let mut resp = req.send().await.map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(fail(format!("bad response code: {status}")));
        }
        let limit = self.limits.max_download;
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(ArtifactError::TooLarge { limit });
        }
        let mut total = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
            total += chunk.len() as u64;
            if total > limit {
                return Err(ArtifactError::TooLarge { limit });
            }
            if let Some(h) = hasher.as_mut() {
                h.update(&chunk);
            }
            out.write_all(&chunk).map_err(|e| ArtifactError::Write {
                path: "temporary download file".into(),
                source: e,
            })?;
        }
        out.flush().map_err(|e| ArtifactError::Write {
            path: "temporary download file".into(),
            source: e,
        })
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ArtifactError> + Send + 'static,
) -> Result<T, ArtifactError> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| ArtifactError::Archive(format!("unpacking stopped: {e}")))?
}

/// Copies a local file into `out`; returns its permission bits.
fn copy_local(
    path: &Path,
    out: &mut std::fs::File,
    mut hasher: Option<&mut Box<dyn DynDigest + Send>>,
    limits: &Limits,
) -> Result<u32, ArtifactError> {
    use std::os::unix::fs::PermissionsExt as _;
    let local = |e| ArtifactError::Local {
        path: path.display().to_string(),
        source: e,
    };
    let mut file = std::fs::File::open(path).map_err(local)?;
    let mode = file.metadata().map_err(local)?.permissions().mode() & 0o777;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(local)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > limits.max_download {
            return Err(ArtifactError::TooLarge {
                limit: limits.max_download,
            });
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&buf[..n]);
        }
        out.write_all(&buf[..n]).map_err(|e| ArtifactError::Write {
            path: "temporary copy".into(),
            source: e,
        })?;
    }
    Ok(mode)
}

/// Puts the fetched file where the artifact says: unpacked, or as a file.
#[allow(clippy::too_many_arguments)]
async fn place(
    tmp: tempfile::NamedTempFile,
    archive: Option<ArchiveKind>,
    mode: &str,
    name: &str,
    root: &Path,
    dest: &Path,
    file_mode: u32,
    limits: Limits,
) -> Result<(), ArtifactError> {
    use std::os::unix::fs::PermissionsExt as _;
    let (root, dest) = (root.to_path_buf(), dest.to_path_buf());
    if let Some(kind) = archive {
        if mode == "file" {
            return Err(ArtifactError::Mode(
                "mode \"file\" keeps a file as it is; set archive = \"false\" (or use mode \"any\" to unpack)"
                    .into(),
            ));
        }
        let name = name.to_owned();
        return blocking(move || {
            let file = tmp
                .reopen()
                .map_err(|e| ArtifactError::Archive(e.to_string()))?;
            let mut out = Unpacker::new(&root, &dest, &limits)?;
            match kind {
                ArchiveKind::Tar => unpack_tar(file, &mut out)?,
                ArchiveKind::TarGz => unpack_tar(flate2::read::GzDecoder::new(file), &mut out)?,
                ArchiveKind::Zip => unpack_zip(file, &mut out)?,
                ArchiveKind::Gz => {
                    let stem = name.strip_suffix(".gz").unwrap_or(&name).to_owned();
                    let stem = if stem.is_empty() {
                        "artifact".to_owned()
                    } else {
                        stem
                    };
                    out.file(
                        Path::new(&stem),
                        &mut flate2::read::GzDecoder::new(file),
                        0o644,
                    )?;
                }
            }
            out.finish()
        })
        .await;
    }
    let target = match mode {
        "dir" => {
            return Err(ArtifactError::Mode(format!(
                "mode \"dir\" needs an archive or a directory, and {name:?} is neither (set archive = … if it is one)"
            )));
        }
        "file" => {
            if dest.is_dir() {
                return Err(ArtifactError::Mode(format!(
                    "mode \"file\" needs a file path as destination, and {} is a directory",
                    dest.display()
                )));
            }
            dest.clone()
        }
        _ => {
            if name.is_empty() {
                return Err(ArtifactError::Mode(
                    "the source names no file; use mode \"file\" with a destination file path"
                        .into(),
                ));
            }
            dest.join(name)
        }
    };
    let parent = target.parent().unwrap_or(&root).to_path_buf();
    sandbox::create_dirs(&root, &parent).map_err(ArtifactError::Destination)?;
    sandbox::check_real(&root, &target).map_err(ArtifactError::Destination)?;
    let write = |e| ArtifactError::Write {
        path: target.display().to_string(),
        source: e,
    };
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(file_mode))
        .map_err(write)?;
    // The temporary file lives in the task directory's root; moving it is a rename.
    tmp.persist(&target).map_err(|e| write(e.error))?;
    Ok(())
}

/// An archive entry's path as a relative path, or `None` when it is absolute or climbs.
fn safe_relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Writes entries into a destination directory within the limits, refusing escapes.
struct Unpacker<'a> {
    root: &'a Path,
    dest: &'a Path,
    limits: &'a Limits,
    files: u64,
    bytes: u64,
    links: Vec<(PathBuf, String)>,
}

impl<'a> Unpacker<'a> {
    fn new(root: &'a Path, dest: &'a Path, limits: &'a Limits) -> Result<Self, ArtifactError> {
        sandbox::create_dirs(root, dest).map_err(ArtifactError::Destination)?;
        Ok(Unpacker {
            root,
            dest,
            limits,
            files: 0,
            bytes: 0,
            links: Vec::new(),
        })
    }

    fn entry_err(entry: &Path, why: impl std::fmt::Display) -> ArtifactError {
        ArtifactError::Entry {
            entry: entry.display().to_string(),
            why: why.to_string(),
        }
    }

    /// The entry's place under the destination, its parents created; `None` for the root.
    fn target(&mut self, entry: &Path) -> Result<Option<PathBuf>, ArtifactError> {
        self.files += 1;
        if self.files > self.limits.max_files {
            return Err(ArtifactError::TooManyFiles(self.limits.max_files));
        }
        let rel = safe_relative(entry).ok_or_else(|| {
            Self::entry_err(entry, "its path is absolute or climbs out with \"..\"")
        })?;
        if rel.as_os_str().is_empty() {
            return Ok(None);
        }
        let target = self.dest.join(rel);
        let parent = target.parent().unwrap_or(self.dest);
        sandbox::create_dirs(self.root, parent).map_err(|e| Self::entry_err(entry, e))?;
        sandbox::check_real(self.root, &target).map_err(|e| Self::entry_err(entry, e))?;
        // Whatever was there is replaced, never written through.
        if let Ok(meta) = std::fs::symlink_metadata(&target)
            && !meta.is_dir()
        {
            std::fs::remove_file(&target).map_err(|e| Self::entry_err(entry, e))?;
        }
        Ok(Some(target))
    }

    fn dir(&mut self, entry: &Path, mode: u32) -> Result<(), ArtifactError> {
        use std::os::unix::fs::PermissionsExt as _;
        let Some(target) = self.target(entry)? else {
            return Ok(());
        };
        sandbox::create_dirs(self.root, &target).map_err(|e| Self::entry_err(entry, e))?;
        std::fs::set_permissions(
            &target,
            std::fs::Permissions::from_mode((mode & 0o777) | 0o700),
        )
        .map_err(|e| Self::entry_err(entry, e))
    }

    fn file(&mut self, entry: &Path, data: &mut dyn Read, mode: u32) -> Result<(), ArtifactError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let Some(target) = self.target(entry)? else {
            return Err(Self::entry_err(entry, "a file entry with no name"));
        };
        if target.is_dir() {
            return Err(Self::entry_err(entry, "a file would replace a directory"));
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            // No setuid, setgid or sticky bits from an archive.
            .mode(mode & 0o777)
            .open(&target)
            .map_err(|e| Self::entry_err(entry, e))?;
        let room = self.limits.max_unpacked.saturating_sub(self.bytes);
        let copied = std::io::copy(&mut data.take(room.saturating_add(1)), &mut out)
            .map_err(|e| Self::entry_err(entry, e))?;
        self.bytes += copied;
        if self.bytes > self.limits.max_unpacked {
            return Err(ArtifactError::UnpackedTooLarge(self.limits.max_unpacked));
        }
        Ok(())
    }

    fn symlink(&mut self, entry: &Path, link: &Path) -> Result<(), ArtifactError> {
        if link.is_absolute() {
            return Err(Self::entry_err(
                entry,
                format!("a symlink to the absolute path {}", link.display()),
            ));
        }
        let Some(target) = self.target(entry)? else {
            return Err(Self::entry_err(entry, "a symlink with no name"));
        };
        if target.is_dir() && !target.is_symlink() {
            return Err(Self::entry_err(
                entry,
                "a symlink would replace a directory",
            ));
        }
        std::os::unix::fs::symlink(link, &target).map_err(|e| Self::entry_err(entry, e))?;
        if let Err(e) = sandbox::check_real(self.root, &target) {
            let _ = std::fs::remove_file(&target);
            return Err(Self::entry_err(entry, e));
        }
        self.links.push((target, entry.display().to_string()));
        Ok(())
    }

    fn hard_link(&mut self, entry: &Path, link: &Path) -> Result<(), ArtifactError> {
        let src_rel = safe_relative(link)
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| {
                Self::entry_err(
                    entry,
                    format!("a hard link to {} outside the archive", link.display()),
                )
            })?;
        let src = self.dest.join(src_rel);
        sandbox::check_real(self.root, &src).map_err(|e| Self::entry_err(entry, e))?;
        if !std::fs::symlink_metadata(&src).is_ok_and(|m| m.is_file()) {
            return Err(Self::entry_err(
                entry,
                format!(
                    "a hard link to {}, which is not a file unpacked before it",
                    link.display()
                ),
            ));
        }
        let Some(target) = self.target(entry)? else {
            return Err(Self::entry_err(entry, "a hard link with no name"));
        };
        std::fs::hard_link(&src, &target).map_err(|e| Self::entry_err(entry, e))
    }

    /// Checks every symlink again now that everything is in place (a later entry can change
    /// where an earlier link leads).
    fn finish(self) -> Result<(), ArtifactError> {
        for (path, entry) in &self.links {
            if let Err(e) = sandbox::check_real(self.root, path) {
                let _ = std::fs::remove_file(path);
                return Err(ArtifactError::Entry {
                    entry: entry.clone(),
                    why: e.to_string(),
                });
            }
        }
        Ok(())
    }
}

fn unpack_tar(reader: impl Read, out: &mut Unpacker<'_>) -> Result<(), ArtifactError> {
    let archive_err = |e: std::io::Error| ArtifactError::Archive(e.to_string());
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(archive_err)? {
        let mut entry = entry.map_err(archive_err)?;
        let path = entry.path().map_err(archive_err)?.into_owned();
        let mode = entry.header().mode().unwrap_or(0o644);
        match entry.header().entry_type() {
            tar::EntryType::Directory => out.dir(&path, mode)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                out.file(&path, &mut entry, mode)?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(archive_err)?
                    .ok_or_else(|| Unpacker::entry_err(&path, "a symlink with no target"))?
                    .into_owned();
                out.symlink(&path, &link)?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(archive_err)?
                    .ok_or_else(|| Unpacker::entry_err(&path, "a hard link with no target"))?
                    .into_owned();
                out.hard_link(&path, &link)?;
            }
            other => {
                tracing::warn!(entry = %path.display(), kind = ?other, "skipping an archive entry that is not a file, directory or link");
            }
        }
    }
    Ok(())
}

fn unpack_zip(file: std::fs::File, out: &mut Unpacker<'_>) -> Result<(), ArtifactError> {
    let zip_err = |e: zip::result::ZipError| ArtifactError::Archive(e.to_string());
    let mut archive = zip::ZipArchive::new(file).map_err(zip_err)?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(zip_err)?;
        let path = PathBuf::from(entry.name().map_err(zip_err)?.into_owned());
        let mode = entry.unix_mode().unwrap_or(0o644);
        if entry.is_dir() {
            out.dir(&path, mode)?;
        } else if entry.is_symlink() {
            let mut link = String::new();
            entry
                .read_to_string(&mut link)
                .map_err(|e| Unpacker::entry_err(&path, e))?;
            out.symlink(&path, Path::new(&link))?;
        } else {
            out.file(&path, &mut entry, mode)?;
        }
    }
    Ok(())
}

/// Copies a local directory's files, directories and (inside-pointing) symlinks.
fn copy_dir(src: &Path, root: &Path, dest: &Path, limits: &Limits) -> Result<(), ArtifactError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut out = Unpacker::new(root, dest, limits)?;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let here = src.join(&rel);
        let local = |e| ArtifactError::Local {
            path: here.display().to_string(),
            source: e,
        };
        let mut entries: Vec<_> = std::fs::read_dir(&here)
            .map_err(local)?
            .collect::<Result<_, _>>()
            .map_err(local)?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for e in entries {
            let rel_e = rel.join(e.file_name());
            let path = e.path();
            let meta = std::fs::symlink_metadata(&path).map_err(|err| ArtifactError::Local {
                path: path.display().to_string(),
                source: err,
            })?;
            let mode = meta.permissions().mode();
            if meta.file_type().is_symlink() {
                let link = std::fs::read_link(&path).map_err(|err| ArtifactError::Local {
                    path: path.display().to_string(),
                    source: err,
                })?;
                out.symlink(&rel_e, &link)?;
            } else if meta.is_dir() {
                out.dir(&rel_e, mode)?;
                stack.push(rel_e);
            } else if meta.is_file() {
                let mut f = std::fs::File::open(&path).map_err(|err| ArtifactError::Local {
                    path: path.display().to_string(),
                    source: err,
                })?;
                out.file(&rel_e, &mut f, mode)?;
            }
        }
    }
    out.finish()
}

#[cfg(test)]
mod tests;
