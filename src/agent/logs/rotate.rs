//! Rotated log files: `<dir>/<task>.<type>.<n>`, `n` counting up from 0.
//!
//! A [`RotatingWriter`] appends to the file with the highest index; when a write would take the
//! file past `max_file_size_bytes` it fills the file up to the write's last line break that fits
//! (or to the brim when a line is longer than a whole file) and carries on in the next index,
//! then deletes the oldest files so that at most `max_files` remain. Output arrives in pieces
//! (pipe reads), so a line written in two pieces may still straddle two files, as in Nomad. Reopened (a logmon restarted, an
//! agent re-attached to a container), it carries on appending to the highest existing index.
//! Files never exceed the size, so byte offsets across files add up exactly.

use super::LogError;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// How a task's output is rotated (the task's `logs { max_files, max_file_size }` block).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogRotation {
    /// Files kept, at least 1.
    pub max_files: u32,
    /// The size a file may reach, at least 1.
    pub max_file_size_bytes: u64,
}

impl Default for LogRotation {
    /// Nomad's defaults: 10 files of 10 MiB.
    fn default() -> Self {
        Self {
            max_files: 10,
            max_file_size_bytes: 10 * 1024 * 1024,
        }
    }
}

impl LogRotation {
    /// From a task's `logs` block (`None`: the defaults); out-of-range numbers are clamped to 1.
    pub fn from_config(config: Option<&caravan_schemas::job::LogConfig>) -> Self {
        let Some(c) = config else {
            return Self::default();
        };
        Self {
            max_files: u32::try_from(c.max_files).unwrap_or(1).max(1),
            max_file_size_bytes: u64::try_from(c.max_file_size_mb)
                .unwrap_or(1)
                .max(1)
                .saturating_mul(1024 * 1024),
        }
    }
}

/// The indexes of `<base>.<n>` files in `dir` (regular files only: a symlink or a directory
/// with a matching name is not a log file), sorted, with their sizes.
pub fn list(dir: &Path, base: &str) -> Result<Vec<(u64, u64)>, LogError> {
    let prefix = format!("{base}.");
    let entries = std::fs::read_dir(dir).map_err(|e| LogError::io(dir, e))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(index) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .filter(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|i| i.parse::<u64>().ok())
        else {
            continue;
        };
        // `DirEntry::metadata` does not follow symlinks.
        match entry.metadata() {
            Ok(m) if m.file_type().is_file() => out.push((index, m.len())),
            _ => {}
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The path of file `index` of `base` in `dir`.
pub fn file_path(dir: &Path, base: &str, index: u64) -> PathBuf {
    dir.join(format!("{base}.{index}"))
}

/// Appends to `<dir>/<base>.<n>`, rotating by size and keeping at most `max_files` files.
#[derive(Debug)]
pub struct RotatingWriter {
    dir: PathBuf,
    base: String,
    rotation: LogRotation,
    index: u64,
    size: u64,
    file: File,
}

impl RotatingWriter {
    /// Opens the newest file of `base` in `dir` for appending (index 0 when there is none),
    /// and purges files beyond `max_files`.
    pub fn open(dir: &Path, base: &str, rotation: LogRotation) -> Result<Self, LogError> {
        let rotation = LogRotation {
            max_files: rotation.max_files.max(1),
            max_file_size_bytes: rotation.max_file_size_bytes.max(1),
        };
        std::fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
        let index = list(dir, base)?.last().map_or(0, |(i, _)| *i);
        let (file, size) = open_append(&file_path(dir, base, index))?;
        let writer = Self {
            dir: dir.to_path_buf(),
            base: base.to_owned(),
            rotation,
            index,
            size,
            file,
        };
        writer.purge()?;
        Ok(writer)
    }

    /// The index of the file being written.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Writes all of `data`, rotating as needed. Nothing is buffered: once this returns, a
    /// reader of the files sees the bytes.
    pub fn write_all(&mut self, mut data: &[u8]) -> Result<(), LogError> {
        let max = self.rotation.max_file_size_bytes;
        while !data.is_empty() {
            if self.size >= max {
                self.rotate()?;
            }
            let room = usize::try_from(max - self.size).unwrap_or(usize::MAX);
            let take = if data.len() <= room {
                data.len()
            } else if let Some(nl) = data[..room].iter().rposition(|b| *b == b'\n') {
                // Whole lines that fit; the rest starts the next file.
                nl + 1
            } else if self.size > 0 && line_len(data) <= usize::try_from(max).unwrap_or(usize::MAX)
            {
                // The next line fits in a fresh file: keep it whole.
                self.rotate()?;
                continue;
            } else {
                // A line longer than a file: fill this one to the brim.
                room
            };
            let path = self.current_path();
            self.file
                .write_all(&data[..take])
                .map_err(|e| LogError::io(&path, e))?;
            self.size += take as u64;
            data = &data[take..];
        }
        Ok(())
    }

    fn current_path(&self) -> PathBuf {
        file_path(&self.dir, &self.base, self.index)
    }

    /// Starts the next file and deletes the oldest beyond `max_files`.
    fn rotate(&mut self) -> Result<(), LogError> {
        self.index += 1;
        let (file, size) = open_append(&self.current_path())?;
        self.file = file;
        self.size = size;
        self.purge()
    }

    /// Deletes files of this log older than the newest `max_files`.
    fn purge(&self) -> Result<(), LogError> {
        let oldest_kept = self
            .index
            .saturating_sub(u64::from(self.rotation.max_files) - 1);
        for (index, _) in list(&self.dir, &self.base)? {
            if index < oldest_kept {
                let path = file_path(&self.dir, &self.base, index);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(LogError::io(&path, e)),
                }
            }
        }
        Ok(())
    }
}

/// The length of the first line of `data` with its newline, or all of `data` if it has none.
fn line_len(data: &[u8]) -> usize {
    data.iter()
        .position(|b| *b == b'\n')
        .map_or(data.len(), |p| p + 1)
}

fn open_append(path: &Path) -> Result<(File, u64), LogError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        // Never write through a symlink planted where a log file should be.
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| LogError::io(path, e))?;
    let size = file.metadata().map_err(|e| LogError::io(path, e))?.len();
    Ok((file, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation(max_files: u32, size: u64) -> LogRotation {
        LogRotation {
            max_files,
            max_file_size_bytes: size,
        }
    }

    fn read(dir: &Path, index: u64) -> String {
        std::fs::read_to_string(file_path(dir, "t.stdout", index)).unwrap()
    }

    #[test]
    fn files_fill_with_whole_lines_and_the_oldest_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RotatingWriter::open(dir.path(), "t.stdout", rotation(3, 10)).unwrap();
        for i in 0..10 {
            w.write_all(format!("line{i}\n").as_bytes()).unwrap();
        }
        // 6 bytes a line, 10 bytes a file: one line per file, indexes 0..=9, 3 kept.
        let files = list(dir.path(), "t.stdout").unwrap();
        assert_eq!(files, vec![(7, 6), (8, 6), (9, 6)]);
        assert_eq!(read(dir.path(), 9), "line9\n");
        assert_eq!(w.index(), 9);
    }

    #[test]
    fn one_write_spanning_files_is_split_at_line_ends() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RotatingWriter::open(dir.path(), "t.stdout", rotation(10, 8)).unwrap();
        w.write_all(b"aa\nbb\ncc\ndd\n").unwrap();
        assert_eq!(read(dir.path(), 0), "aa\nbb\n");
        assert_eq!(read(dir.path(), 1), "cc\ndd\n");
        // A line longer than a file fills files to the brim.
        w.write_all(b"0123456789abcdefXY\n").unwrap();
        assert_eq!(read(dir.path(), 1), "cc\ndd\n01");
        assert_eq!(read(dir.path(), 2), "23456789");
        assert_eq!(read(dir.path(), 3), "abcdefXY");
        assert_eq!(read(dir.path(), 4), "\n");
        let total: u64 = list(dir.path(), "t.stdout")
            .unwrap()
            .iter()
            .map(|(_, s)| s)
            .sum();
        assert_eq!(total, 12 + 19, "no byte lost or doubled");
    }

    #[test]
    fn a_partial_line_that_fits_a_fresh_file_moves_there_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RotatingWriter::open(dir.path(), "t.stdout", rotation(10, 8)).unwrap();
        w.write_all(b"abcde\n").unwrap();
        w.write_all(b"fghij").unwrap();
        w.write_all(b"k\n").unwrap();
        assert_eq!(read(dir.path(), 0), "abcde\n");
        assert_eq!(read(dir.path(), 1), "fghijk\n");
    }

    #[test]
    fn reopening_appends_to_the_newest_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut w = RotatingWriter::open(dir.path(), "t.stdout", rotation(2, 6)).unwrap();
            w.write_all(b"a1\nb1\nc1\n").unwrap();
        }
        assert_eq!(read(dir.path(), 1), "c1\n");
        let mut w = RotatingWriter::open(dir.path(), "t.stdout", rotation(2, 6)).unwrap();
        assert_eq!(w.index(), 1);
        w.write_all(b"d1\ne1\n").unwrap();
        assert_eq!(read(dir.path(), 1), "c1\nd1\n");
        assert_eq!(read(dir.path(), 2), "e1\n");
        assert_eq!(
            list(dir.path(), "t.stdout").unwrap(),
            vec![(1, 6), (2, 3)],
            "at most 2 files"
        );
    }

    #[test]
    fn reopening_with_fewer_files_allowed_purges_at_once() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5 {
            std::fs::write(file_path(dir.path(), "t.stdout", i), "x\n").unwrap();
        }
        RotatingWriter::open(dir.path(), "t.stdout", rotation(2, 100)).unwrap();
        let kept: Vec<u64> = list(dir.path(), "t.stdout")
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(kept, vec![3, 4]);
    }

    #[test]
    fn listing_ignores_other_names_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.stdout.0"), "a").unwrap();
        std::fs::write(dir.path().join("t.stdout.x"), "a").unwrap();
        std::fs::write(dir.path().join("t.stdout."), "a").unwrap();
        std::fs::write(dir.path().join("t.stdout.+1"), "a").unwrap();
        std::fs::write(dir.path().join("t.stderr.3"), "a").unwrap();
        std::fs::write(dir.path().join("tt.stdout.4"), "a").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("t.stdout.2")).unwrap();
        std::fs::create_dir(dir.path().join("t.stdout.5")).unwrap();
        assert_eq!(list(dir.path(), "t.stdout").unwrap(), vec![(0, 1)]);
    }

    #[test]
    fn a_symlink_in_place_of_the_newest_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("t.stdout.0")).unwrap();
        let err = RotatingWriter::open(dir.path(), "t.stdout", rotation(2, 6)).unwrap_err();
        assert!(err.to_string().contains("t.stdout.0"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "");
    }

    #[test]
    fn log_blocks_convert_with_clamping() {
        use caravan_schemas::job::LogConfig;
        assert_eq!(LogRotation::from_config(None), rotation(10, 10 << 20));
        let c = LogConfig {
            max_files: 3,
            max_file_size_mb: 2,
            disabled: false,
        };
        assert_eq!(LogRotation::from_config(Some(&c)), rotation(3, 2 << 20));
        let c = LogConfig {
            max_files: -1,
            max_file_size_mb: 0,
            disabled: false,
        };
        assert_eq!(LogRotation::from_config(Some(&c)), rotation(1, 1 << 20));
    }
}
