//! `caravan logmon`: the process that keeps one task's output while the agent comes and goes.
//!
//! The agent starts it (detached, in its own session) with two FIFOs per task; the task's
//! stdout and stderr are opened on them by the driver. It reads both and writes rotated files
//! with [`RotatingWriter`]. It opens each FIFO read-write, so it never sees end-of-file when
//! the task exits and a restarted task reopens them. It is a single thread with one `poll(2)`
//! loop and no async runtime, to stay small (one runs per task).
//!
//! It ends on SIGTERM, after reading what the pipes still hold; and by itself when its log
//! directory disappears (the allocation was garbage-collected).

use super::rotate::{LogRotation, RotatingWriter};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// How often the log directory's existence is checked.
const DIR_CHECK_MS: u16 = 1000;
/// Bytes read from a pipe at a time (a pipe holds 64 KiB by default).
const READ_CHUNK: usize = 32 * 1024;
/// Reads at most this many chunks when draining on SIGTERM (a leftover writer that never stops
/// must not keep us forever).
const DRAIN_MAX_READS: usize = 4096;

/// `caravan logmon …` (hidden; started by the agent).
#[derive(Debug, Clone, PartialEq, Eq, clap::Parser, serde::Serialize, serde::Deserialize)]
#[command(name = "logmon")]
pub struct LogmonArgs {
    /// The allocation's log directory (`<alloc_dir>/alloc/logs`).
    #[arg(long = "log-dir")]
    pub log_dir: PathBuf,
    /// The task whose output this is: files are `<task>.stdout.<n>`, `<task>.stderr.<n>`.
    #[arg(long)]
    pub task: String,
    /// The FIFO the task's stdout is written to.
    #[arg(long = "stdout-fifo")]
    pub stdout_fifo: PathBuf,
    /// The FIFO the task's stderr is written to.
    #[arg(long = "stderr-fifo")]
    pub stderr_fifo: PathBuf,
    #[arg(long = "max-files", default_value_t = 10)]
    pub max_files: u32,
    #[arg(long = "max-file-size", default_value_t = 10 * 1024 * 1024)]
    pub max_file_size_bytes: u64,
}

impl LogmonArgs {
    /// The command-line arguments that give back `self` (after the `logmon` subcommand).
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut out: Vec<std::ffi::OsString> = Vec::new();
        let mut push = |k: &str, v: std::ffi::OsString| {
            out.push(k.into());
            out.push(v);
        };
        push("--log-dir", self.log_dir.clone().into_os_string());
        push("--task", self.task.clone().into());
        push("--stdout-fifo", self.stdout_fifo.clone().into_os_string());
        push("--stderr-fifo", self.stderr_fifo.clone().into_os_string());
        push("--max-files", self.max_files.to_string().into());
        push(
            "--max-file-size",
            self.max_file_size_bytes.to_string().into(),
        );
        out
    }
}

/// One captured stream: its FIFO and where its bytes go.
struct Stream {
    fifo: File,
    path: PathBuf,
    writer: RotatingWriter,
}

impl Stream {
    fn open(fifo: &Path, dir: &Path, base: &str, rotation: LogRotation) -> Result<Self, String> {
        use std::os::unix::fs::OpenOptionsExt;
        super::make_fifo(fifo).map_err(|e| e.to_string())?;
        // Read-write: we are a writer too, so the pipe never reports end-of-file when the task
        // closes it, and a writer opening it never waits for a reader.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(fifo)
            .map_err(|e| format!("opening {}: {e}", fifo.display()))?;
        let writer = RotatingWriter::open(dir, base, rotation).map_err(|e| e.to_string())?;
        Ok(Self {
            fifo: file,
            path: fifo.to_path_buf(),
            writer,
        })
    }

    /// Copies what the pipe holds into the files, until it is empty or after `max_reads`
    /// reads (so a chatty task does not starve its sibling stream or the signal).
    fn pump(&mut self, buf: &mut [u8], max_reads: usize) {
        for _ in 0..max_reads {
            match self.fifo.read(buf) {
                Ok(0) => return,
                Ok(n) => {
                    if let Err(e) = self.writer.write_all(&buf[..n]) {
                        // Keep reading regardless: a full disk must not block the task.
                        eprintln!("logmon: {e}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("logmon: reading {}: {e}", self.path.display());
                    return;
                }
            }
        }
    }
}

/// `caravan logmon ARGS`: `args` starts with `logmon`. Returns the exit status.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    use clap::Parser;
    match LogmonArgs::try_parse_from(args) {
        Ok(args) => run(&args),
        Err(e) => {
            let _ = e.print();
            2
        }
    }
}

/// Runs logmon until SIGTERM or until its log directory is gone; returns the exit status.
pub fn run(args: &LogmonArgs) -> i32 {
    match serve(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("logmon: {e}");
            1
        }
    }
}

fn serve(args: &LogmonArgs) -> Result<(), String> {
    // Our own session: no terminal's signals, and the agent's process group may die alone.
    let _ = nix::unistd::setsid();
    // SIGTERM arrives through a descriptor polled with the pipes; SIGINT and SIGHUP are kept
    // blocked (a dev agent's Ctrl-C is not for us).
    let mut blocked = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        blocked.add(s);
    }
    blocked
        .thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    let signals = SignalFd::with_flags(&term, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {e}"))?;

    let rotation = LogRotation {
        max_files: args.max_files,
        max_file_size_bytes: args.max_file_size_bytes,
    };
    let mut streams = [
        Stream::open(
            &args.stdout_fifo,
            &args.log_dir,
            &format!("{}.stdout", args.task),
            rotation,
        )?,
        Stream::open(
            &args.stderr_fifo,
            &args.log_dir,
            &format!("{}.stderr", args.task),
            rotation,
        )?,
    ];
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let (ready, stop) = {
            let mut fds = [
                PollFd::new(streams[0].fifo.as_fd(), PollFlags::POLLIN),
                PollFd::new(streams[1].fifo.as_fd(), PollFlags::POLLIN),
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::from(DIR_CHECK_MS)) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("poll: {e}")),
            }
            let readable = |fd: &PollFd| fd.any().unwrap_or(false);
            ([readable(&fds[0]), readable(&fds[1])], readable(&fds[2]))
        };
        for (stream, ready) in streams.iter_mut().zip(ready) {
            if ready {
                stream.pump(&mut buf, 16);
            }
        }
        if stop {
            // Whatever the task wrote before it was stopped is in the pipes: take it all.
            for stream in &mut streams {
                stream.pump(&mut buf, DRAIN_MAX_READS);
            }
            return Ok(());
        }
        if !args.log_dir.is_dir() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_agent_s_arguments_read_back() {
        let args = LogmonArgs {
            log_dir: "/data/client/allocs/a b/alloc/logs".into(),
            task: "web".into(),
            stdout_fifo: "/x/.web.stdout.fifo".into(),
            stderr_fifo: "/x/.web.stderr.fifo".into(),
            max_files: 3,
            max_file_size_bytes: 1234,
        };
        let argv = std::iter::once("logmon".into()).chain(args.to_args());
        assert_eq!(LogmonArgs::try_parse_from(argv).unwrap(), args);
        assert_eq!(main(["logmon".into(), "--bogus".into()]), 2);
    }
}
