//! A plugin for tests: `faulty.misbehave` plans `shards` shards; shard `bad`
//! misbehaves as `how` says, the others compute a row honestly.

use guest_sdk::{Call, Function, Helper, Param, Plugin, Result, Row, Shard, Shards, Table, bail};
use serde::{Deserialize, Serialize};

struct Faulty;

/// A shard's payload: all its `run` knows of the call.
#[derive(Serialize, Deserialize)]
struct Work {
    i: i64,
    /// How it misbehaves, if it is shard `bad`.
    how: Option<String>,
    sleep_ms: u64,
    rows: i64,
    emit: String,
    /// A file it reads into its `read` cell.
    read: Option<String>,
}

impl Plugin for Faulty {
    fn describe() -> Vec<Function> {
        vec![
            Function::new(
                "faulty.misbehave",
                "Shard `bad` misbehaves as `how` says; the others square their index.",
            )
            .param(Param::new("shards", "int", "How many shards.").default(4))
            .param(Param::new("bad", "int", "Which shard misbehaves (-1: none).").default(-1))
            .param(
                Param::new(
                    "how",
                    "string",
                    "trap | error | spin | alloc | stack | recurse | sleep | slow | rows | cell | log | helper* | \
                     badrow | probe | emit-csv | emit-prefix | emit-many | emit-empty | huge-error | \
                     escape | error-column | long-column | wide",
                )
                .default("trap"),
            )
            .param(Param::new("sleep_ms", "int", "Every shard sleeps this long first.").default(0))
            .param(Param::new("first", "int", "The first shard's number (plans `first..first+shards`).").default(0))
            .param(Param::new("rows", "int", "Rows each good shard pushes.").default(1))
            .param(
                Param::new("emit", "string", "A side output every good shard writes (its index).")
                    .default(""),
            )
            .param(
                Param::new(
                    "plan",
                    "string",
                    "ok | panic | empty | sleep | huge-error | escape | lazy: how `plan` behaves (lazy: made as the engine takes them).",
                )
                    .default("ok"),
            )
            .param(
                Param::new("reads", "list<string>", "The data directories every shard declares it reads.")
                    .default(Vec::<String>::new()),
            )
            .param(
                Param::new(
                    "read",
                    "list<string>",
                    "Files to read: the n-th shard planned reads the n-th into its `read` cell \
                     (failing if it cannot).",
                )
                .default(Vec::<String>::new()),
            ),
        ]
    }

    fn plan(call: &Call) -> Result<Shards> {
        let n: i64 = call.arg("shards")?;
        let how_to_plan = call.arg::<String>("plan")?;
        match how_to_plan.as_str() {
            "panic" => panic!("plan asked to panic"),
            "empty" => return Ok(Vec::new().into()),
            "sleep" => std::thread::sleep(std::time::Duration::from_secs(3600)),
            "huge-error" => bail!("{}", "x".repeat(64 << 20)),
            "escape" => bail!("plan says \x1b[2J\x1b]0;pwned\x07hello\r"),
            _ => {}
        }
        let first: i64 = call.arg("first")?;
        let bad: i64 = call.arg("bad")?;
        let how: String = call.arg("how")?;
        let reads: Vec<String> = call.arg("reads")?;
        let read: Vec<String> = call.arg("read")?;
        let sleep_ms: u64 = call.arg("sleep_ms")?;
        let rows: i64 = call.arg("rows")?;
        let emit: String = call.arg("emit")?;
        let shards = (first..first + n).enumerate().map(move |(k, i)| {
            let work = Work {
                i,
                how: (i == bad).then(|| how.clone()),
                sleep_ms,
                rows: if i == bad { 1 } else { rows },
                emit: emit.clone(),
                read: read.get(k).cloned(),
            };
            Ok(Shard::new()
                .key("shard", i)
                .payload(work)?
                .reads(reads.iter().cloned()))
        });
        match how_to_plan.as_str() {
            // Made as the engine takes them: never a list in memory.
            "lazy" => Ok(Shards::lazy(shards)),
            _ => shards.collect(),
        }
    }

    fn serve(request: &[u8]) -> Result<Vec<u8>> {
        match request {
            b"trap" => panic!("helper asked to trap"),
            b"spin" => loop {
                std::hint::black_box(());
            },
            b"alloc" => {
                let v = vec![1u8; 40 << 20];
                std::hint::black_box(&v);
                Ok(b"allocated".to_vec())
            }
            b"helper" => Ok(Helper::start()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
                .into_bytes()),
            r => match r
                .strip_prefix(b"square ")
                .and_then(|n| std::str::from_utf8(n).ok())
            {
                Some(n) => {
                    let n: i64 = n.parse()?;
                    Ok((n * n).to_string().into_bytes())
                }
                None => bail!("unknown request"),
            },
        }
    }

    fn run(_function: &str, shard: &Shard, out: &mut Table) -> Result<()> {
        let work: Work = shard.get()?;
        let i = work.i;
        std::thread::sleep(std::time::Duration::from_millis(work.sleep_ms));
        if let Some(how) = &work.how {
            misbehave(how, out)?;
        }
        let mut buf = [0u8; 8];
        getrandom::fill(&mut buf).map_err(|e| guest_sdk::Error::new(e))?;
        let mut row = Row::new()
            .set("shard", i)
            .set("square", i * i)
            .set("random", (u64::from_le_bytes(buf) % 1_000_000) as i64);
        if let Some(path) = &work.read {
            let text = std::fs::read_to_string(path)
                .map_err(|e| guest_sdk::Error::new(format!("cannot read `{path}`: {e}")))?;
            row = row.set("read", text);
        }
        if !work.emit.is_empty() {
            guest_sdk::emit(&work.emit, i.to_string().as_bytes())?;
        }
        for _ in 1..work.rows {
            out.push(row.clone())?;
        }
        out.push(row)
    }
}

fn misbehave(how: &str, out: &mut Table) -> Result<()> {
    match how {
        "trap" => panic!("shard asked to trap"),
        "error" => bail!("shard asked to fail"),
        "spin" => loop {
            std::hint::black_box(());
        },
        "alloc" => {
            let mut hog: Vec<Vec<u8>> = Vec::new();
            loop {
                hog.push(vec![1u8; 16 << 20]);
                std::hint::black_box(&hog);
            }
        }
        "stack" => {
            fn deep(n: u64) -> u64 {
                let pad = std::hint::black_box([n; 64]);
                if n == 0 { 0 } else { deep(n - 1) + pad[3] }
            }
            std::hint::black_box(deep(u64::MAX));
            Ok(())
        }
        "rows" => loop {
            out.push(Row::new().set("spam", "row"))?;
        },
        "cell" => out.push(Row::new().set("huge", "x".repeat(4 << 20))),
        "log" => loop {
            guest_sdk::info!("{}", "spam ".repeat(1000));
        },
        "badrow" => out.push(Row::new().set("", 1)),
        // Plain recursion on scalars: the frames live on the native (wasm)
        // stack, not in linear memory.
        "recurse" => {
            #[inline(never)]
            fn rec(n: u64) -> u64 {
                if n == 0 {
                    0
                } else {
                    std::hint::black_box(rec(std::hint::black_box(n - 1))).wrapping_add(n)
                }
            }
            std::hint::black_box(rec(std::hint::black_box(u64::MAX)));
            Ok(())
        }
        // A blocking WASI call: no wasm code runs while it waits.
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(3600));
            Ok(())
        }
        // Takes 2 s, then computes its row like the others.
        "slow" => {
            std::thread::sleep(std::time::Duration::from_secs(2));
            Ok(())
        }
        "emit-csv" => guest_sdk::emit("csv", b"not the results\n"),
        "emit-prefix" => {
            guest_sdk::emit("a", b"file")?;
            guest_sdk::emit("a/b", b"under the file")
        }
        "emit-many" => {
            for i in 0..200_000 {
                guest_sdk::emit(&format!("many/{i}"), b"x")?;
            }
            Ok(())
        }
        "emit-empty" => loop {
            guest_sdk::emit("empty", b"")?;
        },
        "huge-error" => bail!("{}", "x".repeat(64 << 20)),
        "escape" => bail!("shard says \x1b[2J\x1b]0;pwned\x07hello\r"),
        "error-column" => out.push(Row::new().set("error", "not an error")),
        "long-column" => out.push(Row::new().set(&"c".repeat(100_000), 1)),
        // Many columns in one part (other shards are narrow): the merge pads.
        // 990 + the three of every row stay within `limits.columns`.
        "wide" => {
            let mut row = Row::new();
            for c in 0..990 {
                row = row.set(&format!("wide_{c:04}"), c);
            }
            out.push(row)
        }
        "probe" => out.push(probe_sandbox()),
        // Helpers (run with `limits.threads = 2`): one that answers, then what a
        // helper may not do (start its own) and what the shard may not (a second).
        "helper" => {
            let h = Helper::start()?;
            h.send(b"square 7")?;
            let reply = h.receive()?;
            if reply != b"49" {
                bail!("the helper answered {:?}", String::from_utf8_lossy(&reply));
            }
            h.send(b"helper")?;
            let nested = String::from_utf8_lossy(&h.receive()?).into_owned();
            let second = Helper::start()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            if !nested.contains("not from a helper") || !second.contains("no thread is left") {
                bail!("helpers started where none may: {nested:?}, {second:?}");
            }
            Ok(())
        }
        "helper-trap" | "helper-spin" => {
            let h = Helper::start()?;
            h.send(how.trim_start_matches("helper-").as_bytes())?;
            h.receive()?;
            Ok(())
        }
        // 40 MB here and 40 MB in the helper: more than 64M for the two together.
        "helper-alloc" => {
            let mine = vec![1u8; 40 << 20];
            std::hint::black_box(&mine);
            let h = Helper::start()?;
            h.send(b"alloc")?;
            h.receive()?;
            Ok(())
        }
        // The shard ends while its helper spins: the helper must end with it.
        "helper-abandoned" => {
            let h = Helper::start()?;
            h.send(b"spin")?;
            Ok(())
        }
        other => bail!("unknown misbehaviour `{other}`"),
    }
}

/// Try everything the sandbox must forbid; each cell says `denied: …` or `ALLOWED: …`.
fn probe_sandbox() -> Row {
    fn verdict<T: std::fmt::Debug, E: std::fmt::Display>(r: std::result::Result<T, E>) -> String {
        match r {
            Ok(v) => format!("ALLOWED: {v:?}").chars().take(200).collect(),
            Err(e) => format!("denied: {e}"),
        }
    }
    let data = guest_sdk::data_dir();
    let env: Vec<(String, String)> = std::env::vars().collect();
    Row::new()
        .set(
            "read_data",
            verdict(std::fs::read_to_string(data.join("inside.txt"))),
        )
        .set(
            "read_parent",
            verdict(std::fs::read_to_string(data.join("../secret.txt"))),
        )
        .set(
            "read_absolute",
            verdict(std::fs::read_to_string("/etc/passwd")),
        )
        .set(
            "read_proc_environ",
            verdict(std::fs::read("/proc/self/environ")),
        )
        .set(
            "read_symlink",
            verdict(std::fs::read_to_string(data.join("escape"))),
        )
        .set(
            "write_data",
            verdict(std::fs::write(data.join("new.txt"), "x")),
        )
        .set(
            "overwrite_data",
            verdict(std::fs::write(data.join("inside.txt"), "x")),
        )
        .set(
            "delete_data",
            verdict(std::fs::remove_file(data.join("inside.txt"))),
        )
        .set("mkdir_data", verdict(std::fs::create_dir(data.join("d"))))
        .set(
            "env",
            if env.is_empty() {
                "denied: empty".to_owned()
            } else {
                format!("ALLOWED: {env:?}")
            },
        )
        .set("tcp", verdict(std::net::TcpStream::connect("127.0.0.1:9")))
        .set(
            "dns",
            verdict(std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 80))),
        )
}

guest_sdk::export!(Faulty);
