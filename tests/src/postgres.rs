//! A PostgreSQL server of the test's own, started the way the Kubernetes example's database tests
//! start theirs (`examples/kubernetes-service-discovery/tests/integration/postgres.rs`): `initdb`
//! into a fresh directory, `pg_ctl` to start it on 127.0.0.1 and a free port only, and, as root,
//! as the `postgres` user (the server refuses to run as root).
//!
//! [`PgServer::start`] returns `None` after a loud `SKIPPED` message when PostgreSQL is not
//! installed; with `CI=true` it panics instead, so CI cannot skip silently. `initdb` and `pg_ctl`
//! are found in `$GROUPCACHE_TEST_PG_BINDIR` (`scripts/test.sh` exports it), else in the newest
//! `/usr/lib/postgresql/*/bin`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// How to install the server, for the skip message.
const INSTALL: &str = "apt-get install postgresql (as root; scripts/test.sh does it)";

/// A running PostgreSQL server; stopped, and its directory deleted, when dropped.
#[derive(Debug)]
pub struct PgServer {
    bindir: PathBuf,
    /// Data, socket and log, outside the repository so that the `postgres` user can reach it.
    dir: PathBuf,
    run_as_postgres: bool,
    /// `postgres://postgres@127.0.0.1:port/postgres`.
    pub url: String,
}

fn find_bindir() -> Option<PathBuf> {
    let from_env = std::env::var_os("GROUPCACHE_TEST_PG_BINDIR").map(PathBuf::from);
    let found = from_env.or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version = entry.file_name().to_str()?.parse().ok()?;
                Some((version, entry.path().join("bin")))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    });
    if let Some(bin) = found.filter(|bin| bin.join("initdb").is_file()) {
        return Some(bin);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but PostgreSQL's initdb was not found. Install it: {INSTALL}.");
    }
    // Straight to the process's stderr: the test harness captures `eprintln!`.
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: {test}: PostgreSQL (initdb, pg_ctl) is not installed.\n\
         *** Install it ({INSTALL}) to run it; with CI=true this is a failure.\n"
    );
    None
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// A port that was free a moment ago (the kernel's pick for 127.0.0.1:0).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

impl PgServer {
    /// Initialises and starts a server, or `None` if PostgreSQL is not installed.
    ///
    /// # Panics
    ///
    /// When `initdb` or `pg_ctl` fails, and when PostgreSQL is missing with `CI=true`.
    pub fn start(name: &str) -> Option<PgServer> {
        let bindir = find_bindir()?;
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "groupcache-pg-{name}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the PostgreSQL directory");
        let mut server = PgServer {
            bindir,
            dir,
            run_as_postgres: is_root(),
            url: String::new(),
        };
        if server.run_as_postgres {
            server.must(Command::new("chown").args(["postgres:postgres", &server.path()]));
        }
        server.must(&mut server.tool(
            "initdb",
            &[
                "-D",
                &server.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        ));
        // A free port can be taken by another process between the pick and the bind: retry.
        for attempt in 1..=3 {
            let port = free_port();
            server.url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
            let output = server.run(&mut server.start_command(port));
            if output.status.success() {
                return Some(server);
            }
            assert!(
                attempt < 3,
                "pg_ctl start failed: {}\n{}",
                String::from_utf8_lossy(&output.stderr),
                server.log()
            );
        }
        unreachable!("the loop returns or panics")
    }

    fn path(&self) -> String {
        self.dir.display().to_string()
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn tool(&self, tool: &str, args: &[&str]) -> Command {
        let binary = self.bindir.join(tool);
        let mut command = if self.run_as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(binary);
            command
        } else {
            Command::new(binary)
        };
        command.args(args).current_dir(&self.dir);
        command
    }

    fn start_command(&self, port: u16) -> Command {
        // fsync off: the data is thrown away, and a test should not wait on the disk.
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off",
            self.path()
        );
        let log = self.dir.join("server.log").display().to_string();
        self.tool(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "start",
            ],
        )
    }

    fn run(&self, command: &mut Command) -> Output {
        command
            .output()
            .unwrap_or_else(|error| panic!("running {command:?}: {error}"))
    }

    fn must(&self, command: &mut Command) {
        let output = self.run(command);
        assert!(
            output.status.success(),
            "{command:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .tool(
                "pg_ctl",
                &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
            )
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
