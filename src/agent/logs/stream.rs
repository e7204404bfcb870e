//! Reading a task's log as Nomad's `/v1/client/fs/logs/:alloc` serves it.
//!
//! A log is the task's rotated files `<task>.<type>.<n>` read in order. Reading starts at
//! `offset` bytes after the start of the oldest file still there (`origin=start`) or `offset`
//! bytes before the end of the newest (`origin=end`), walking across files ([`start_position`]).
//! It goes on to the end of the newest file and stops, or with `follow` keeps waiting for more:
//! a file followed to its end is left for the next one once that exists (rotation), and the
//! stream ends once the task is done for good and everything it wrote was sent.
//!
//! The body is raw bytes with `plain=true`, else JSON frames `{"Offset","Data","File"}`, one a
//! line: `Data` is base64, `File` the file it came from (`alloc/logs/web.stdout.3`) and `Offset`
//! the offset in that file after `Data`. A following JSON stream also sends a heartbeat frame
//! `{}` when it first reaches the end of the log, and after each second without output.
//!
//! Paths never leave the allocation directory: the task is one of the allocation's, file names
//! are built (never taken from the request), the log directory must be a real directory inside
//! the allocation directory, and log files are opened without following symlinks.

use super::rotate::{file_path, list};
use super::{LogError, check_task_name, log_dir, output_complete};
use base64::Engine;
use bytes::Bytes;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The most bytes sent in one frame.
const FRAME_BYTES: usize = 64 * 1024;
/// How often a followed log is checked for more output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// A following JSON stream's heartbeat period when there is no output.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// `stdout` or `stderr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogKind {
    Stdout,
    Stderr,
}

impl LogKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LogKind::Stdout => "stdout",
            LogKind::Stderr => "stderr",
        }
    }
}

/// What a logs request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogQuery {
    pub task: String,
    pub kind: LogKind,
    /// Bytes from the start (or, with `from_end`, before the end).
    pub offset: u64,
    pub from_end: bool,
    pub follow: bool,
    pub plain: bool,
}

/// Go's `strconv.ParseBool`, as Nomad reads `follow` and `plain`; absent or empty is false.
fn parse_bool(name: &str, value: Option<&str>) -> Result<bool, LogError> {
    match value {
        None | Some("") => Ok(false),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(other) => Err(LogError::Invalid(format!(
            "failed to parse {name} field to boolean: {other:?}"
        ))),
    }
}

impl LogQuery {
    /// Reads `task`, `type`, `offset`, `origin`, `follow` and `plain`. `tasks` are the
    /// allocation's tasks: the task must be one of them (it may be left out when there is one).
    pub fn parse(params: &HashMap<String, String>, tasks: &[String]) -> Result<Self, LogError> {
        let param = |k: &str| params.get(k).map(String::as_str);
        let task = match (param("task").filter(|t| !t.is_empty()), tasks) {
            (Some(t), _) if tasks.iter().any(|g| g == t) => t.to_owned(),
            (Some(t), _) => {
                return Err(LogError::Invalid(format!(
                    "unknown task name {t:?}: the allocation's tasks are {}",
                    tasks.join(", ")
                )));
            }
            (None, [only]) => only.clone(),
            (None, _) => {
                return Err(LogError::Invalid("must include task name (?task=)".into()));
            }
        };
        check_task_name(&task)?;
        let kind = match param("type").unwrap_or("stdout") {
            "stdout" | "" => LogKind::Stdout,
            "stderr" => LogKind::Stderr,
            other => {
                return Err(LogError::Invalid(format!(
                    "log type must be stdout or stderr, got {other:?}"
                )));
            }
        };
        let offset = match param("offset").filter(|o| !o.is_empty()) {
            None => 0,
            Some(o) => o
                .parse()
                .map_err(|_| LogError::Invalid(format!("error parsing offset: {o:?}")))?,
        };
        let from_end = match param("origin").unwrap_or("start") {
            "start" | "" => false,
            "end" => true,
            other => {
                return Err(LogError::Invalid(format!(
                    "origin must be start or end, got {other:?}"
                )));
            }
        };
        Ok(Self {
            task,
            kind,
            offset,
            from_end,
            follow: parse_bool("follow", param("follow"))?,
            plain: parse_bool("plain", param("plain"))?,
        })
    }

    /// `<task>.<type>`, the files' common prefix.
    fn base(&self) -> String {
        format!("{}.{}", self.task, self.kind.as_str())
    }
}

/// Where reading starts in `files` ((index, size), sorted by index): `offset` bytes after the
/// start of the first file, or before the end of the last; clamped to the log's ends. `None`
/// when there is no file.
pub fn start_position(files: &[(u64, u64)], offset: u64, from_end: bool) -> Option<(u64, u64)> {
    let (first, last) = (files.first()?, files.last()?);
    let mut left = offset;
    if from_end {
        for &(index, size) in files.iter().rev() {
            if left <= size {
                return Some((index, size - left));
            }
            left -= size;
        }
        Some((first.0, 0))
    } else {
        for &(index, size) in files {
            if left <= size {
                return Some((index, left));
            }
            left -= size;
        }
        Some((last.0, last.1))
    }
}

/// One JSON frame, newline-terminated: `{"Offset":…,"Data":"<base64>","File":"alloc/logs/…"}`.
pub fn frame(file: &str, offset_after: u64, data: &[u8]) -> Bytes {
    let mut out = serde_json::to_vec(&serde_json::json!({
        "Offset": offset_after,
        "Data": base64::engine::general_purpose::STANDARD.encode(data),
        "File": file,
    }))
    .unwrap_or_default();
    out.push(b'\n');
    out.into()
}

/// The heartbeat frame.
pub const HEARTBEAT_FRAME: &[u8] = b"{}\n";

/// The allocation's log directory, after checking that it is a real directory inside it.
pub fn confined_log_dir(alloc_dir: &Path) -> Result<PathBuf, LogError> {
    let root = alloc_dir
        .canonicalize()
        .map_err(|e| LogError::NotFound(format!("{}: {e}", alloc_dir.display())))?;
    let shared = alloc_dir.join("alloc");
    let dir = log_dir(alloc_dir);
    for p in [&shared, &dir] {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => return Err(LogError::Escapes(p.clone())),
            Err(e) => {
                return Err(LogError::NotFound(format!(
                    "no log directory {}: {e}",
                    p.display()
                )));
            }
        }
    }
    let real = dir.canonicalize().map_err(|e| LogError::io(&dir, e))?;
    if !real.starts_with(&root) {
        return Err(LogError::Escapes(dir));
    }
    Ok(real)
}

/// A log being read: where it is, and what was asked.
#[derive(Debug)]
pub struct LogReader {
    dir: PathBuf,
    base: String,
    task_dir: PathBuf,
    follow: bool,
    plain: bool,
    index: u64,
    offset: u64,
    /// Without follow: the newest file when reading started, where it stops.
    last_index: u64,
    file: Option<tokio::fs::File>,
    buf: Vec<u8>,
    /// A following JSON stream has said it caught up.
    caught_up: bool,
    last_sent: Instant,
    done: bool,
}

impl LogReader {
    /// Starts reading the log `query` names in the allocation directory `alloc_dir`. Without
    /// follow, a log with no file yet is `NotFound`; with follow, it is waited for.
    pub fn open(alloc_dir: &Path, query: &LogQuery) -> Result<Self, LogError> {
        check_task_name(&query.task)?;
        let dir = confined_log_dir(alloc_dir)?;
        let base = query.base();
        let files = list(&dir, &base)?;
        let (index, offset) = match start_position(&files, query.offset, query.from_end) {
            Some(p) => p,
            None if query.follow => (0, 0),
            None => {
                return Err(LogError::NotFound(format!(
                    "log entry for task {:?} and log type {:?} not found",
                    query.task,
                    query.kind.as_str()
                )));
            }
        };
        Ok(Self {
            dir,
            base,
            task_dir: alloc_dir.join(&query.task),
            follow: query.follow,
            plain: query.plain,
            index,
            offset,
            last_index: files.last().map_or(0, |(i, _)| *i),
            file: None,
            buf: vec![0; FRAME_BYTES],
            caught_up: false,
            last_sent: Instant::now(),
            done: false,
        })
    }

    /// The body, chunk by chunk.
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
        futures::stream::unfold(self, |mut reader| async move {
            let chunk = reader.next_chunk().await;
            match chunk {
                Ok(Some(bytes)) => Some((Ok(bytes), reader)),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "reading a log");
                    reader.done = true;
                    Some((Err(std::io::Error::other(e.to_string())), reader))
                }
            }
        })
    }

    fn path(&self, index: u64) -> PathBuf {
        file_path(&self.dir, &self.base, index)
    }

    /// The oldest file after the current one, if any.
    fn next_index(&self) -> Result<Option<u64>, LogError> {
        Ok(list(&self.dir, &self.base)?
            .into_iter()
            .map(|(i, _)| i)
            .find(|i| *i > self.index))
    }

    async fn open_current(&mut self) -> Result<bool, LogError> {
        let path = self.path(self.index);
        let opened = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .await;
        let mut file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
                return Err(LogError::Escapes(path));
            }
            Err(e) => return Err(LogError::io(&path, e)),
        };
        file.seek(std::io::SeekFrom::Start(self.offset))
            .await
            .map_err(|e| LogError::io(&path, e))?;
        self.file = Some(file);
        Ok(true)
    }

    /// Reads what the current file has after the offset, as one chunk of the body.
    async fn read_some(&mut self) -> Result<Option<Bytes>, LogError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(None);
        };
        let n = file
            .read(&mut self.buf)
            .await
            .map_err(|e| LogError::io(&file_path(&self.dir, &self.base, self.index), e))?;
        if n == 0 {
            return Ok(None);
        }
        self.offset += n as u64;
        self.last_sent = Instant::now();
        let data = &self.buf[..n];
        Ok(Some(if self.plain {
            Bytes::copy_from_slice(data)
        } else {
            frame(
                &format!("alloc/logs/{}.{}", self.base, self.index),
                self.offset,
                data,
            )
        }))
    }

    fn move_to(&mut self, index: u64) {
        self.index = index;
        self.offset = 0;
        self.file = None;
    }

    /// The next chunk of the body, or `None` at its end.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, LogError> {
        loop {
            if self.done {
                return Ok(None);
            }
            if self.file.is_none() && !self.open_current().await? {
                // Rotated away under us, or not written yet.
                if let Some(next) = self.next_index()? {
                    self.move_to(next);
                    continue;
                }
                if !self.follow || output_complete(&self.task_dir) {
                    return Ok(None);
                }
                if let Some(beat) = self.idle().await {
                    return Ok(Some(beat));
                }
                continue;
            }
            if let Some(chunk) = self.read_some().await? {
                return Ok(Some(chunk));
            }
            // At the end of the current file.
            if !self.follow {
                if self.index >= self.last_index {
                    return Ok(None);
                }
                match self.next_index()? {
                    Some(next) => {
                        self.move_to(next);
                        continue;
                    }
                    None => return Ok(None),
                }
            }
            // Whatever was written before these two looks is in the files now: read once more.
            let complete = output_complete(&self.task_dir);
            let next = self.next_index()?;
            if let Some(chunk) = self.read_some().await? {
                return Ok(Some(chunk));
            }
            if let Some(next) = next {
                // A newer file existed before that read: this one is final.
                self.move_to(next);
                continue;
            }
            if complete {
                return Ok(None);
            }
            if let Some(beat) = self.idle().await {
                return Ok(Some(beat));
            }
        }
    }

    /// Waits a little for more output; a JSON stream gets a heartbeat when it first catches up
    /// and after each quiet second.
    async fn idle(&mut self) -> Option<Bytes> {
        if !self.plain && (!self.caught_up || self.last_sent.elapsed() >= HEARTBEAT) {
            self.caught_up = true;
            self.last_sent = Instant::now();
            return Some(Bytes::from_static(HEARTBEAT_FRAME));
        }
        tokio::time::sleep(FOLLOW_POLL).await;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn queries_parse_and_bad_ones_say_why() {
        let tasks = vec!["web".to_owned()];
        let q = LogQuery::parse(&query(&[]), &tasks).unwrap();
        assert_eq!(
            q,
            LogQuery {
                task: "web".into(),
                kind: LogKind::Stdout,
                offset: 0,
                from_end: false,
                follow: false,
                plain: false
            }
        );
        let q = LogQuery::parse(
            &query(&[
                ("task", "web"),
                ("type", "stderr"),
                ("offset", "12"),
                ("origin", "end"),
                ("follow", "true"),
                ("plain", "1"),
            ]),
            &tasks,
        )
        .unwrap();
        assert!(q.follow && q.plain && q.from_end && q.offset == 12);
        assert_eq!(q.kind, LogKind::Stderr);
        for (pairs, needle) in [
            (&[("task", "../web")][..], "unknown task"),
            (&[("type", "stdin")], "log type"),
            (&[("offset", "-3")], "offset"),
            (&[("origin", "middle")], "origin"),
            (&[("follow", "yes")], "follow"),
        ] {
            let err = LogQuery::parse(&query(pairs), &tasks).unwrap_err();
            assert!(matches!(err, LogError::Invalid(_)), "{err}");
            assert!(err.to_string().contains(needle), "{err}");
        }
        let two = vec!["a".to_owned(), "b".to_owned()];
        assert!(LogQuery::parse(&query(&[]), &two).is_err(), "which task?");
        let odd = vec!["..".to_owned()];
        assert!(LogQuery::parse(&query(&[]), &odd).is_err(), "never a path");
    }

    #[test]
    fn start_positions_walk_across_files() {
        let files = [(3, 10), (4, 10), (5, 4)];
        assert_eq!(start_position(&files, 0, false), Some((3, 0)));
        assert_eq!(start_position(&files, 7, false), Some((3, 7)));
        assert_eq!(start_position(&files, 10, false), Some((3, 10)));
        assert_eq!(start_position(&files, 15, false), Some((4, 5)));
        assert_eq!(start_position(&files, 23, false), Some((5, 3)));
        assert_eq!(start_position(&files, 99, false), Some((5, 4)), "clamped");
        assert_eq!(start_position(&files, 0, true), Some((5, 4)));
        assert_eq!(start_position(&files, 4, true), Some((5, 0)));
        assert_eq!(start_position(&files, 6, true), Some((4, 8)));
        assert_eq!(start_position(&files, 24, true), Some((3, 0)));
        assert_eq!(start_position(&files, 99, true), Some((3, 0)), "clamped");
        assert_eq!(start_position(&[], 5, true), None);
    }

    #[test]
    fn frames_carry_the_file_and_the_offset_after_the_data() {
        let f = frame("alloc/logs/web.stdout.2", 17, b"hello\n");
        let v: serde_json::Value = serde_json::from_slice(&f).unwrap();
        assert_eq!(v["File"], "alloc/logs/web.stdout.2");
        assert_eq!(v["Offset"], 17);
        assert_eq!(v["Data"], "aGVsbG8K");
        assert!(f.ends_with(b"}\n"));
    }

    /// An allocation directory with the log files `files` of task `t`'s stdout.
    fn alloc_with(files: &[(u64, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("alloc/logs")).unwrap();
        std::fs::create_dir_all(dir.path().join("t")).unwrap();
        for (i, text) in files {
            std::fs::write(dir.path().join(format!("alloc/logs/t.stdout.{i}")), text).unwrap();
        }
        dir
    }

    fn q(offset: u64, from_end: bool, follow: bool, plain: bool) -> LogQuery {
        LogQuery {
            task: "t".into(),
            kind: LogKind::Stdout,
            offset,
            from_end,
            follow,
            plain,
        }
    }

    async fn body(dir: &Path, query: &LogQuery) -> Vec<u8> {
        let stream = LogReader::open(dir, query).unwrap().into_stream();
        let chunks: Vec<Bytes> = stream.map(Result::unwrap).collect().await;
        chunks.concat()
    }

    #[tokio::test]
    async fn reads_span_files_from_either_end() {
        let dir = alloc_with(&[(2, "aaaa\n"), (3, "bbbb\n"), (4, "cc\n")]);
        assert_eq!(
            body(dir.path(), &q(0, false, false, true)).await,
            b"aaaa\nbbbb\ncc\n"
        );
        assert_eq!(
            body(dir.path(), &q(7, false, false, true)).await,
            b"bb\ncc\n"
        );
        assert_eq!(body(dir.path(), &q(5, true, false, true)).await, b"b\ncc\n");
        assert_eq!(
            body(dir.path(), &q(100, true, false, true)).await,
            b"aaaa\nbbbb\ncc\n"
        );
        let framed = body(dir.path(), &q(4, true, false, false)).await;
        let frames: Vec<serde_json::Value> = framed
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(frames[0]["File"], "alloc/logs/t.stdout.3");
        assert_eq!(frames[0]["Offset"], 5);
        assert_eq!(frames[1]["File"], "alloc/logs/t.stdout.4");
        assert_eq!(frames[1]["Offset"], 3);
    }

    #[tokio::test]
    async fn a_missing_log_is_not_found_unless_followed() {
        let dir = alloc_with(&[]);
        let err = LogReader::open(dir.path(), &q(0, false, false, true)).unwrap_err();
        assert!(matches!(err, LogError::NotFound(_)), "{err}");
        assert!(LogReader::open(dir.path(), &q(0, false, true, true)).is_ok());
    }

    #[tokio::test]
    async fn following_crosses_rotations_and_ends_when_the_task_is_done() {
        let dir = alloc_with(&[(0, "one\n")]);
        let logs = dir.path().join("alloc/logs");
        let mut stream = Box::pin(
            LogReader::open(dir.path(), &q(0, false, true, true))
                .unwrap()
                .into_stream(),
        );
        assert_eq!(stream.next().await.unwrap().unwrap(), "one\n");
        // More in the same file, then a rotation: the rest of file 0 comes before file 1.
        let mut w = super::super::RotatingWriter::open(
            &logs,
            "t.stdout",
            super::super::LogRotation {
                max_files: 2,
                max_file_size_bytes: 8,
            },
        )
        .unwrap();
        w.write_all(b"two\nthree\nfour\n").unwrap();
        let mut got = Vec::new();
        while got.len() < b"two\nthree\nfour\n".len() {
            got.extend_from_slice(&stream.next().await.unwrap().unwrap());
        }
        assert_eq!(got, b"two\nthree\nfour\n");
        // The task is done for good (no logmon): the stream ends after the last bytes.
        w.write_all(b"last\n").unwrap();
        super::super::stop(&dir.path().join("t"));
        let rest: Vec<Bytes> = stream.map(Result::unwrap).collect().await;
        assert_eq!(rest.concat(), b"last\n");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn symlinks_out_of_the_allocation_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "secret\n").unwrap();
        // A log file that is a symlink is not a log file.
        let dir = alloc_with(&[(0, "ok\n")]);
        std::os::unix::fs::symlink(
            outside.path().join("secret"),
            dir.path().join("alloc/logs/t.stdout.1"),
        )
        .unwrap();
        assert_eq!(body(dir.path(), &q(0, false, false, true)).await, b"ok\n");
        // A log directory that is a symlink is refused.
        let dir = alloc_with(&[]);
        std::fs::remove_dir(dir.path().join("alloc/logs")).unwrap();
        std::fs::create_dir_all(outside.path().join("logs")).unwrap();
        std::fs::write(outside.path().join("logs/t.stdout.0"), "secret\n").unwrap();
        std::os::unix::fs::symlink(outside.path().join("logs"), dir.path().join("alloc/logs"))
            .unwrap();
        let err = LogReader::open(dir.path(), &q(0, false, false, true)).unwrap_err();
        assert!(matches!(err, LogError::Escapes(_)), "{err}");
    }
}
