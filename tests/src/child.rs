//! A child process that announces where it listens: the one helper behind the Go peer
//! (`go::GoPeer`), the replica processes (`process::ProcessReplica`) and the benchmark's server
//! processes (`bench/src/cluster.rs`, which compiles this file as its own module: it uses only
//! `std`, and links nothing outside this file).
//!
//! The child prints `listening {url}` on stdout once its socket is bound; [`ListeningChild::spawn`]
//! blocks until then. The child is SIGKILLed when the handle is dropped, so it never outlives the
//! test.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

/// A running child process that has bound its socket; killed when dropped.
#[derive(Debug)]
pub struct ListeningChild {
    /// The URL it printed (`listening {url}`).
    pub url: String,
    /// The address it printed after the URL (`listening {url} {addr}`), or else its URL.
    pub addr: String,
    /// Its process id.
    pub pid: u32,
    child: Mutex<Option<Child>>,
    /// When piped, closing it (on drop) tells the child to exit.
    _stdin: Option<ChildStdin>,
    /// Held open so the child never writes to a closed pipe; read by [`ListeningChild::next_line`].
    stdout: Mutex<BufReader<ChildStdout>>,
}

impl ListeningChild {
    /// Starts `command` and waits for its `listening {url}` line. With `pipe_stdin`, the child's
    /// stdin is a pipe held by the handle (children that exit when it closes); otherwise null.
    ///
    /// # Panics
    ///
    /// When the command cannot start, or exits (or prints anything else) before listening.
    pub fn spawn(command: Command, pipe_stdin: bool) -> ListeningChild {
        ListeningChild::try_spawn(command, pipe_stdin).unwrap_or_else(|message| panic!("{message}"))
    }

    /// [`ListeningChild::spawn`], answering what went wrong instead of panicking.
    ///
    /// # Errors
    ///
    /// When the command cannot start, or exits (or prints anything else) before listening.
    pub fn try_spawn(mut command: Command, pipe_stdin: bool) -> Result<ListeningChild, String> {
        let mut child = command
            .stdin(if pipe_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|error| format!("starting {command:?}: {error}"))?;
        let stdin = child.stdin.take();
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{command:?}: no stdout"));
        };
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        // Blocks until the child has bound its socket (or exits: EOF, an empty line).
        let read = stdout.read_line(&mut line);
        let mut words = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or("")
            .split(' ');
        let url = words.next().unwrap_or("").to_owned();
        if url.is_empty() {
            let _ = child.kill();
            let status = child.wait();
            return Err(format!(
                "{command:?} did not start: read {read:?}, line {line:?}, exit {status:?}"
            ));
        }
        Ok(ListeningChild {
            addr: words.next().unwrap_or(&url).to_owned(),
            url,
            pid: child.id(),
            child: Mutex::new(Some(child)),
            _stdin: stdin,
            stdout: Mutex::new(stdout),
        })
    }

    /// Blocks until the child prints its next line on stdout, and returns it trimmed; `None` once
    /// the child has closed stdout (it exited).
    pub fn next_line(&self) -> Option<String> {
        let mut stdout = self
            .stdout
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut line = String::new();
        match stdout.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim().to_owned()),
        }
    }

    /// Sends SIGTERM (a graceful shutdown, as Kubernetes asks a pod to stop); does not wait.
    ///
    /// # Panics
    ///
    /// When `kill` cannot be run or fails (the process is gone).
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (`TERM`, `STOP`, `CONT`, ...) with `kill(1)`; does not wait.
    ///
    /// # Panics
    ///
    /// When `kill` cannot be run or fails (the process is gone).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid);
    }

    /// SIGKILLs the process (like a crash) and waits for it: when this returns, its port refuses
    /// connections and every connection it had is closed. Idempotent.
    pub fn kill(&self) {
        let mut child = self
            .child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(mut child) = child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ListeningChild {
    fn drop(&mut self) {
        self.kill();
    }
}
