//! Three replicas of a service in one process on loopback, sharing one groupcache.
//!
//! Concurrent gets from every replica go through a deliberately slow loader; the table shows
//! that each distinct key was loaded once in the whole cluster, by its owner, while everyone else
//! waited for that load or asked the owner.
//!
//! ```text
//! cargo run -p groupcache-rs --example local_cluster -- [--replicas 3] [--keys 40] [--gets 3000] [--load-ms 100]
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use groupcache_rs::{Groupcache, Loaded, Loader};

/// A "database" that takes `latency` per query and counts every query, cluster-wide.
#[derive(Clone)]
struct SlowDatabase {
    latency: Duration,
    queries: Arc<Mutex<HashMap<String, usize>>>,
}

impl Loader for SlowDatabase {
    type Value = String;
    type Error = std::convert::Infallible;

    async fn load(&self, key: &str) -> Result<Loaded<String>, Self::Error> {
        *self
            .queries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_owned())
            .or_default() += 1;
        tokio::time::sleep(self.latency).await;
        Ok(Loaded::new(format!("row {key}")))
    }
}

struct Options {
    replicas: usize,
    keys: usize,
    gets: usize,
    load_ms: u64,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        replicas: 3,
        keys: 40,
        gets: 3000,
        load_ms: 100,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number: u64 = value
            .parse()
            .map_err(|_| format!("{flag}: {value:?} is not a number"))?;
        match flag.as_str() {
            "--replicas" => options.replicas = number.max(1) as usize,
            "--keys" => options.keys = number.max(1) as usize,
            "--gets" => options.gets = number as usize,
            "--load-ms" => options.load_ms = number,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(options)
}

/// The `i`-th key of a skewed mix over `keys` keys: key 0 is asked for most, the last least.
fn skewed(i: usize, keys: usize) -> usize {
    // A fixed pseudo-random spread of i, then a square root: a linearly falling popularity.
    let spread = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
    let n = spread % (keys * keys) as u64;
    keys - 1 - (n as f64).sqrt() as usize
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = options().map_err(|e| {
        format!("{e}\nusage: local_cluster [--replicas N] [--keys N] [--gets N] [--load-ms MS]")
    })?;
    let database = SlowDatabase {
        latency: Duration::from_millis(options.load_ms),
        queries: Arc::default(),
    };

    // Each replica: a listener on a free loopback port, a cache that knows its own URL, and the
    // cache's router served by axum, exactly as a service would nest it into its app.
    let mut replicas = Vec::new();
    for _ in 0..options.replicas {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let cache = Groupcache::builder("rows", url, database.clone()).build()?;
        let app = axum::Router::new().merge(cache.router());
        tokio::spawn(async move { axum::serve(listener, app).await });
        replicas.push(cache);
    }
    // Discovery: every replica learns the full membership.
    let urls: Vec<String> = replicas
        .iter()
        .map(|cache| cache.self_url().to_owned())
        .collect();
    for cache in &replicas {
        cache.set_peers(&urls)?;
    }

    println!(
        "{} replicas, {} keys, {} gets per replica in 3 concurrent waves, loader latency {} ms",
        options.replicas, options.keys, options.gets, options.load_ms
    );
    let started = Instant::now();
    let mut errors = 0;
    // Three waves: the first meets empty caches, the later ones find main and hot copies.
    for wave in 0..3 {
        let mut gets = Vec::new();
        for cache in &replicas {
            for i in 0..options.gets / 3 {
                let cache = cache.clone();
                let key = format!("user-{}", skewed(wave * options.gets + i, options.keys));
                gets.push(tokio::spawn(async move {
                    cache.get(&key).await.map(|value| (key, value))
                }));
            }
        }
        for get in gets {
            match get.await? {
                Ok((key, value)) if value == format!("row {key}") => {}
                Ok((key, value)) => return Err(format!("wrong value for {key}: {value}").into()),
                Err(error) => {
                    errors += 1;
                    eprintln!("get failed: {error}");
                }
            }
        }
    }
    let elapsed = started.elapsed();

    println!();
    println!(
        "{:<24} {:>7} {:>10} {:>9} {:>12} {:>6}",
        "replica", "gets", "main hits", "hot hits", "peer served", "loads"
    );
    for cache in &replicas {
        let stats = cache.stats();
        println!(
            "{:<24} {:>7} {:>10} {:>9} {:>12} {:>6}",
            cache.self_url(),
            stats.gets,
            stats.main_hits,
            stats.hot_hits,
            stats.server_requests,
            stats.local_loads
        );
    }
    let queries = database.queries.lock().unwrap_or_else(|e| e.into_inner());
    let loads: usize = queries.values().sum();
    println!();
    println!(
        "cluster-wide: {} distinct keys, {} loads, {:.2} loads per distinct key, {} errors, {:.2} s",
        queries.len(),
        loads,
        loads as f64 / queries.len().max(1) as f64,
        errors,
        elapsed.as_secs_f64()
    );
    if errors > 0 {
        return Err(format!("{errors} gets failed").into());
    }
    Ok(())
}
