//! A PostgreSQL server of the test's own (Debian's `postgresql` package): `initdb` into a fresh
//! directory, `pg_ctl` to start and stop it, listening on 127.0.0.1 and a free port only, with
//! `pg_stat_statements` loaded so that PostgreSQL itself counts the statements the replicas run.
//! As root, the server runs as the `postgres` user (it refuses to run as root).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::process::free_ports;

/// How to install the server, for the skip message.
const INSTALL: &str = "apt-get install postgresql (as root; scripts/test.sh does it)";

pub(crate) struct PgServer {
    bindir: PathBuf,
    /// The cluster's directory (data, socket, log), outside the repository so that the
    /// `postgres` user can reach it.
    dir: PathBuf,
    run_as_postgres: bool,
    pub port: u16,
    /// `postgres://postgres@127.0.0.1:port/postgres`.
    pub url: String,
}

/// The directory of `initdb` and `pg_ctl`: `$GROUPCACHE_TEST_PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/*/bin`. Without one: `None` after a loud message, or a panic when
/// `CI=true`.
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

impl PgServer {
    /// Initialises and starts a server, or `None` if PostgreSQL is not installed (see
    /// [`find_bindir`]).
    pub(crate) fn start(name: &str) -> Option<PgServer> {
        let bindir = find_bindir()?;
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ksd-pg-{name}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the PostgreSQL directory");
        let run_as_postgres = is_root();
        let mut server = PgServer {
            bindir,
            dir,
            run_as_postgres,
            port: 0,
            url: String::new(),
        };
        if run_as_postgres {
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
        // Free ports can be lost to another process between the pick and the bind: retry.
        for attempt in 1..=3 {
            server.port = free_ports(1)[0];
            server.url = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port);
            let output = server.run(&mut server.start_command());
            if output.status.success() {
                server.sql_blocking("CREATE EXTENSION IF NOT EXISTS pg_stat_statements");
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
    pub(crate) fn log(&self) -> String {
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

    fn start_command(&self) -> Command {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c shared_preload_libraries=pg_stat_statements \
             -c fsync=off",
            self.port,
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

    /// Stops the server (fast: open connections are closed), waiting until it has.
    pub(crate) fn stop(&self) {
        self.must(&mut self.tool("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]));
    }

    /// Starts it again on the same port, waiting until it accepts connections.
    pub(crate) fn restart(&self) {
        self.must(&mut self.start_command());
    }

    fn sql_blocking(&self, sql: &str) {
        self.must(&mut self.tool(
            "psql",
            &[
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ],
        ));
    }

    /// A connection of the test's own (plain TCP on loopback).
    pub(crate) async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|error| panic!("connecting to {}: {error}\n{}", self.url, self.log()));
        tokio::spawn(connection);
        client
    }

    /// How many times PostgreSQL ran the replicas' item `SELECT` since the last reset
    /// (`pg_stat_statements`, normalised per statement).
    pub(crate) async fn item_selects(client: &tokio_postgres::Client) -> i64 {
        Self::calls(client, "SELECT key, value::text, expires_at FROM items%").await
    }

    /// The category counts (the `categories` group's loads) run since the last reset.
    pub(crate) async fn category_counts(client: &tokio_postgres::Client) -> i64 {
        Self::calls(client, "SELECT count(*), min(expires_at) FROM items%").await
    }

    /// The calls of the statements `LIKE pattern` since the last reset of `pg_stat_statements`.
    async fn calls(client: &tokio_postgres::Client, pattern: &str) -> i64 {
        client
            .query_one(
                "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
                 WHERE query LIKE $1",
                &[&pattern],
            )
            .await
            .expect("read pg_stat_statements")
            .get(0)
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
        if std::thread::panicking() {
            let _ = writeln!(
                std::io::stderr(),
                "PostgreSQL files kept in {}; log:\n{}",
                self.dir.display(),
                self.log()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
