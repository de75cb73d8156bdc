//! `cachectl`, the command line for a running cluster: read, write and delete items, look at a
//! replica's ring and counters, and purge the items cache (an admin), through any replica's REST
//! API.
//!
//! Exit codes, for scripts:
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | done |
//! | 1 | no such item (`get`, `delete`) |
//! | 2 | usage error, or the replica refused the input (a 4xx: bad key, value or expiry) |
//! | 3 | the replica could not be reached, or failed (a 5xx other than 503, an unexpected answer) |
//! | 4 | the database is unavailable (503): nothing was written; try again |
//!
//! `get` of several keys reads them in one request (`POST /items/_batch`) and exits with the
//! worst key's code: 3 over 4 over 2 over 1.

use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use crate::config::parse_duration;

/// Exit codes (see the module's documentation).
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// No such item.
    pub const NOT_FOUND: u8 = 1;
    /// Usage error, or input the replica refused.
    pub const USAGE: u8 = 2;
    /// Unreachable, or failed.
    pub const FAILED: u8 = 3;
    /// The database is unavailable: retry.
    pub const UNAVAILABLE: u8 = 4;
}

/// Reads, writes and inspects a groupcache cluster of kubernetes-service-discovery through any
/// of its replicas.
///
/// Exit codes: 0 done, 1 not found, 2 usage error or input refused (4xx), 3 replica unreachable
/// or failed, 4 database unavailable (retry).
#[derive(Debug, Parser)]
#[command(name = "cachectl", version)]
pub struct Cli {
    /// The replica to ask: its main port's base URL.
    #[arg(
        long,
        short,
        env = "CACHECTL_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,

    /// Print the replica's JSON answers (problem details on errors) instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// A file holding the admin token, sent as `Authorization: Bearer` (`purge` needs it).
    #[arg(long, env = "CACHECTL_ADMIN_TOKEN_FILE", global = true)]
    pub admin_token_file: Option<std::path::PathBuf>,

    /// The longest wait for an answer (`500ms`, `5s`).
    #[arg(long, default_value = "10s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print an item's value (with --json: the whole answer, with its owner and expiry). With
    /// several keys, one request for them all, and one `KEY VALUE` line per item found.
    Get {
        /// The key, or keys (at most 100).
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Write an item: to the database, then to every replica's cache.
    Put {
        /// The key.
        key: String,
        /// The value, as JSON (`'{"a": 1}'`, `42`, `'"text"'`); with --string, taken as text.
        value: String,
        /// Take VALUE as a string rather than JSON.
        #[arg(long)]
        string: bool,
        /// Expire after this long (`90s`, `10m`, `24h`; whole seconds).
        #[arg(long, value_parser = parse_duration, conflicts_with = "expires_at")]
        ttl: Option<Duration>,
        /// Expire at this Unix time (seconds).
        #[arg(long)]
        expires_at: Option<u64>,
    },
    /// Delete an item.
    Delete {
        /// The key.
        key: String,
    },
    /// Print the replica that owns a key.
    Owner {
        /// The key.
        key: String,
    },
    /// Print the members of the replica's ring.
    Peers,
    /// Print the replica's cache counters.
    Stats,
    /// Empty the items cache on every replica (the database is untouched): every key is loaded
    /// again by its next read. Needs the admin token (`--admin-token-file`).
    Purge,
}

/// What a command printed and how it ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// For stdout.
    pub stdout: String,
    /// For stderr.
    pub stderr: String,
    /// The exit code.
    pub code: u8,
}

impl Outcome {
    fn ok(stdout: String) -> Outcome {
        Outcome {
            stdout,
            stderr: String::new(),
            code: exit::OK,
        }
    }

    fn fail(code: u8, stderr: String) -> Outcome {
        Outcome {
            stdout: String::new(),
            stderr,
            code,
        }
    }
}

/// Runs `cli`, returning what to print and the exit code.
pub async fn run(cli: &Cli) -> Outcome {
    let request = match request(cli) {
        Ok(request) => request,
        Err(message) => return Outcome::fail(exit::USAGE, format!("cachectl: {message}\n")),
    };
    let client = match reqwest::Client::builder()
        .timeout(cli.timeout)
        .no_proxy()
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            return Outcome::fail(exit::FAILED, format!("cachectl: HTTP client: {error}\n"));
        }
    };
    let url = format!("{}{}", cli.server.trim_end_matches('/'), request.path);
    let mut builder = client.request(request.method, &url);
    if let Some(path) = &cli.admin_token_file {
        match std::fs::read(path) {
            Ok(token) => {
                let token = String::from_utf8_lossy(token.trim_ascii()).into_owned();
                builder = builder.bearer_auth(token);
            }
            Err(error) => {
                return Outcome::fail(
                    exit::USAGE,
                    format!("cachectl: reading {}: {error}\n", path.display()),
                );
            }
        }
    }
    if let Some(body) = request.body {
        builder = builder
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = match builder.send().await {
        Ok(response) => response,
        Err(error) => {
            return Outcome::fail(
                exit::FAILED,
                format!("cachectl: cannot reach {url}: {}\n", error_chain(&error)),
            );
        }
    };
    let status = response.status().as_u16();
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(error) => {
            return Outcome::fail(
                exit::FAILED,
                format!("cachectl: reading the answer of {url}: {error}\n"),
            );
        }
    };
    let json: Option<Value> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).ok()
    };
    render(cli, status, json.as_ref())
}

/// A request to make.
struct Request {
    method: reqwest::Method,
    path: String,
    body: Option<Value>,
}

fn request(cli: &Cli) -> Result<Request, String> {
    let item = |key: &str| format!("/items/{}", escape(key));
    let get = |path: String| Request {
        method: reqwest::Method::GET,
        path,
        body: None,
    };
    Ok(match &cli.command {
        Command::Get { keys } => match &keys[..] {
            [key] => get(item(key)),
            keys => Request {
                method: reqwest::Method::POST,
                path: "/items/_batch".to_owned(),
                body: Some(json!({ "keys": keys })),
            },
        },
        Command::Owner { key } => get(format!("/admin/owner/{}", escape(key))),
        Command::Peers => get("/admin/peers".to_owned()),
        Command::Stats => get("/admin/stats".to_owned()),
        Command::Purge => Request {
            method: reqwest::Method::DELETE,
            path: "/items".to_owned(),
            body: None,
        },
        Command::Delete { key } => Request {
            method: reqwest::Method::DELETE,
            path: item(key),
            body: None,
        },
        Command::Put {
            key,
            value,
            string,
            ttl,
            expires_at,
        } => {
            let value = if *string {
                Value::String(value.clone())
            } else {
                serde_json::from_str(value).map_err(|error| {
                    format!("VALUE is not JSON ({error}); quote text as '\"text\"' or use --string")
                })?
            };
            let mut body = json!({ "value": value });
            if let Some(ttl) = ttl {
                if ttl.subsec_nanos() != 0 || ttl.is_zero() {
                    return Err(format!("--ttl {ttl:?}: use whole seconds, at least 1s"));
                }
                body["ttl_seconds"] = json!(ttl.as_secs());
            }
            if let Some(at) = expires_at {
                body["expires_at"] = json!(at);
            }
            Request {
                method: reqwest::Method::PUT,
                path: item(key),
                body: Some(body),
            }
        }
    })
}

/// Percent-encodes everything but the key characters the service accepts, so that a bad key
/// reaches the replica (and is refused there, 400) rather than changing the path.
fn escape(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The exit code of an HTTP answer.
pub fn exit_code(status: u16) -> u8 {
    match status {
        200..=299 => exit::OK,
        404 => exit::NOT_FOUND,
        503 => exit::UNAVAILABLE,
        400..=499 => exit::USAGE,
        _ => exit::FAILED,
    }
}

/// Which of two exit codes a command of many keys ends with: the worse (3 over 4 over 2 over 1).
fn worse(a: u8, b: u8) -> u8 {
    let rank = |code| match code {
        exit::FAILED => 4,
        exit::UNAVAILABLE => 3,
        exit::USAGE => 2,
        exit::NOT_FOUND => 1,
        _ => 0,
    };
    if rank(b) > rank(a) { b } else { a }
}

fn render(cli: &Cli, status: u16, json: Option<&Value>) -> Outcome {
    if let (Command::Get { keys }, 200, Some(answer)) = (&cli.command, status, json)
        && keys.len() > 1
    {
        return render_batch(cli, answer);
    }
    let code = exit_code(status);
    if code != exit::OK {
        let detail = json
            .and_then(|problem| problem["detail"].as_str())
            .unwrap_or("no details");
        let mut outcome = Outcome::fail(code, format!("cachectl: {detail} (HTTP {status})\n"));
        if cli.json {
            outcome.stdout = json
                .map(|problem| format!("{problem}\n"))
                .unwrap_or_default();
        }
        return outcome;
    }
    let null = Value::Null;
    let json = json.unwrap_or(&null);
    // 202: written (or purged), but some replica may answer the old value for a while: say so.
    let stale = if status == 202 && matches!(cli.command, Command::Purge) {
        "cachectl: warning: not every replica could be reached: it is sent the purge again, and \
         may answer items from before until it gets it (HTTP 202)\n"
            .to_owned()
    } else if status == 202 {
        let until = json["stale_until"]
            .as_u64()
            .map_or_else(|| "it is evicted".to_owned(), |at| format!("{at} (unix)"));
        format!(
            "cachectl: warning: written to the database, but not every replica's cache was \
             reached: some may answer the old value until {until} (HTTP 202)\n"
        )
    } else {
        String::new()
    };
    let mut outcome = render_ok(cli, json);
    outcome.stderr.insert_str(0, &stale);
    outcome
}

/// The text (or JSON) of a successful answer.
fn render_ok(cli: &Cli, json: &Value) -> Outcome {
    if cli.json {
        return Outcome::ok(if json.is_null() {
            String::new()
        } else {
            format!("{json}\n")
        });
    }
    let text = |value: &Value| match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Outcome::ok(match &cli.command {
        Command::Get { .. } => format!("{}\n", raw_value(&json["item"]["value"])),
        Command::Put { key, .. } => {
            let expiry = match json["item"]["expires_at"].as_u64() {
                Some(at) => format!(", expires at {at} (unix)"),
                None => String::new(),
            };
            format!("stored {key}{expiry}; owner {}\n", text(&json["owner"]))
        }
        Command::Delete { key } => format!("deleted {key}\n"),
        Command::Purge => "purged the items cache on every replica\n".to_owned(),
        Command::Owner { key } => {
            let whose = if json["is_self"] == true {
                "this replica"
            } else {
                "another replica"
            };
            format!("{key}: {} ({whose})\n", text(&json["owner"]))
        }
        Command::Peers => {
            let me = &json["self"];
            let peers = json["peers"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            peers
                .iter()
                .map(|peer| {
                    let mark = if peer == me { "  (this replica)" } else { "" };
                    format!("{}{mark}\n", text(peer))
                })
                .collect()
        }
        Command::Stats => json
            .as_object()
            .map(|fields| {
                fields
                    .iter()
                    .map(|(name, value)| format!("{name:<20} {}\n", text(value)))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// A value as `put` took it: a string as its raw text (what `put --string` stored), anything
/// else as JSON.
fn raw_value(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => serde_json::to_string_pretty(other).unwrap_or_else(|_| other.to_string()),
    }
}

/// The answer of a batch: a line per key, on stdout for items, on stderr for the others.
fn render_batch(cli: &Cli, answer: &Value) -> Outcome {
    let results = answer["results"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut outcome = Outcome::ok(if cli.json {
        format!("{answer}\n")
    } else {
        String::new()
    });
    if results.is_empty() {
        outcome.code = exit::FAILED;
        outcome.stderr = "cachectl: the replica answered no results\n".to_owned();
    }
    for result in results {
        let key = result["key"].as_str().unwrap_or("?");
        let status = result["status"]
            .as_u64()
            .and_then(|status| u16::try_from(status).ok())
            .unwrap_or(500);
        let code = exit_code(status);
        outcome.code = worse(outcome.code, code);
        if code == exit::OK {
            if !cli.json {
                // One line per key: strings raw, other values as compact JSON.
                let value = match &result["item"]["value"] {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                outcome.stdout += &format!("{key} {value}\n");
            }
        } else {
            let detail = result["problem"]["detail"].as_str().unwrap_or("no details");
            outcome.stderr += &format!("cachectl: {key}: {detail} (HTTP {status})\n");
        }
    }
    outcome
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cachectl").chain(args.iter().copied()))
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(200), exit::OK);
        assert_eq!(exit_code(204), exit::OK);
        assert_eq!(exit_code(404), exit::NOT_FOUND);
        for refused in [400, 413, 415, 422] {
            assert_eq!(exit_code(refused), exit::USAGE);
        }
        assert_eq!(exit_code(503), exit::UNAVAILABLE);
        for failed in [500, 502, 302] {
            assert_eq!(exit_code(failed), exit::FAILED);
        }
    }

    #[test]
    fn put_requests() {
        let cli = parse(&["put", "k", r#"{"a": 1}"#, "--ttl", "90s"]).unwrap();
        let put = request(&cli).unwrap();
        assert_eq!(put.path, "/items/k");
        assert_eq!(
            put.body,
            Some(json!({"value": {"a": 1}, "ttl_seconds": 90}))
        );
        let cli = parse(&["put", "k", "text", "--string", "--expires-at", "5"]).unwrap();
        let body = request(&cli).unwrap().body;
        assert_eq!(body, Some(json!({"value": "text", "expires_at": 5})));
        assert!(request(&parse(&["put", "k", "text"]).unwrap()).is_err());
        assert!(request(&parse(&["put", "k", "1", "--ttl", "1500ms"]).unwrap()).is_err());
        assert!(parse(&["put", "k", "1", "--ttl", "1s", "--expires-at", "5"]).is_err());
        let cli = parse(&["get", "a/b c"]).unwrap();
        assert_eq!(request(&cli).unwrap().path, "/items/a%2Fb%20c");
        let many = request(&parse(&["get", "a", "b/c"]).unwrap()).unwrap();
        assert_eq!(
            (many.method, &many.path[..]),
            (reqwest::Method::POST, "/items/_batch")
        );
        assert_eq!(many.body, Some(json!({"keys": ["a", "b/c"]})));
        assert!(parse(&["get"]).is_err(), "get needs a key");
    }

    /// `get` prints a string as the raw text `put --string` took, and says so when a write did
    /// not reach every replica (202).
    #[test]
    fn strings_print_raw_and_incomplete_writes_warn() {
        let get = parse(&["get", "banner"]).unwrap();
        let answer = json!({"item": {"value": "maintenance at 22:00"}});
        let outcome = render(&get, 200, Some(&answer));
        assert_eq!(outcome.stdout, "maintenance at 22:00\n");
        let many = parse(&["get", "a", "b"]).unwrap();
        let answer = json!({"results": [
            {"key": "a", "status": 200, "item": {"value": "x y"}},
            {"key": "b", "status": 200, "item": {"value": {"n": 1}}},
        ]});
        assert_eq!(
            render(&many, 200, Some(&answer)).stdout,
            "a x y\nb {\"n\":1}\n"
        );
        let put = parse(&["put", "k", "1"]).unwrap();
        let answer = json!({"item": {"value": 1}, "owner": "o", "stale_until": 1_800_000_000});
        let outcome = render(&put, 202, Some(&answer));
        assert_eq!(outcome.code, exit::OK);
        assert!(
            outcome.stderr.contains("until 1800000000"),
            "{}",
            outcome.stderr
        );
    }

    #[test]
    fn purges() {
        let cli = parse(&["purge", "--admin-token-file", "token"]).unwrap();
        let purge = request(&cli).unwrap();
        assert_eq!(
            (purge.method, &purge.path[..]),
            (reqwest::Method::DELETE, "/items")
        );
        let done = render(&cli, 204, None);
        assert_eq!(
            (done.code, &done.stdout[..]),
            (exit::OK, "purged the items cache on every replica\n")
        );
        let partial = render(&cli, 202, Some(&json!({"detail": "d", "served_by": "r"})));
        assert_eq!(partial.code, exit::OK);
        assert!(partial.stderr.contains("purge again"), "{}", partial.stderr);
        let refused = render(&cli, 401, Some(&json!({"detail": "no token"})));
        assert_eq!(refused.code, exit::USAGE);
    }

    #[test]
    fn batch_answers() {
        let cli = parse(&["get", "a", "b", "c"]).unwrap();
        let answer = |statuses: &[u16]| {
            let results: Vec<Value> = statuses
                .iter()
                .zip(["a", "b", "c"])
                .map(|(&status, key)| match status {
                    200 => json!({"key": key, "status": 200, "item": {"value": {"k": key}}}),
                    _ => json!({"key": key, "status": status, "problem": {"detail": "no"}}),
                })
                .collect();
            render(&cli, 200, Some(&json!({ "results": results })))
        };
        let all = answer(&[200, 200, 200]);
        assert_eq!(
            (all.code, &all.stdout[..]),
            (
                exit::OK,
                "a {\"k\":\"a\"}\nb {\"k\":\"b\"}\nc {\"k\":\"c\"}\n"
            )
        );
        let missing = answer(&[200, 404, 200]);
        assert_eq!(missing.code, exit::NOT_FOUND);
        assert_eq!(missing.stderr, "cachectl: b: no (HTTP 404)\n");
        assert_eq!(missing.stdout.lines().count(), 2);
        assert_eq!(answer(&[503, 404, 200]).code, exit::UNAVAILABLE);
        assert_eq!(answer(&[503, 500, 404]).code, exit::FAILED);
        assert_eq!(answer(&[]).code, exit::FAILED);
        // A refused batch is the whole request's problem.
        let refused = render(&cli, 413, Some(&json!({"detail": "too many"})));
        assert_eq!(refused.code, exit::USAGE);
    }
}
