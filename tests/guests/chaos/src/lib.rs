//! `chaos.run`: each shard, driven by `seed` and its index, calls the host's
//! imports directly (not through the SDK's checks) in random order with
//! random arguments: odd sizes, bad and colliding names, UTF-8 edge cases,
//! control characters, calls after errors, sleeps, allocation, traps.
//! Every row it pushes carries `shard`, so a test can check one row per
//! failed shard and no row lost or doubled.

// Natively it is only built (its exports are wasm's), never used.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

use guest_sdk::bindings::engine::plugin::host::{self, Level, TableWriter};
use guest_sdk::bindings::engine::plugin::types::{Cell, FunctionInfo, Param, Shard};
use guest_sdk::bindings::exports::engine::plugin::planner;

struct Chaos;

/// splitmix64: small, seedable, the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const NAMES: &[&str] = &[
    "a",
    "b",
    "score",
    "error",
    "",
    "é",
    "\u{1b}[31mred",
    "tab\there",
    "nul\0",
    "a,b",
    "\"q\"",
    "line\nbreak",
    "\u{202e}rtl",
    "🦀",
    "shard_",
    "x",
];
const OUTPUTS: &[&str] = &[
    "a",
    "a/b",
    "a/b/c",
    "csv",
    "../up",
    "/abs",
    "a//b",
    ".",
    "..",
    "ok.txt",
    "é.txt",
    "samples/x.csv",
    "samples",
    "deep/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16/17",
    "",
    "con\u{7}trol",
    "results.csv",
];

fn text(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => String::new(),
        1 => "\u{1b}]0;title\u{7}\u{1b}[2J".into(),
        2 => "é🦀\u{0}\u{fffd}".repeat(rng.below(50) as usize),
        3 => "x".repeat(rng.below(100_000) as usize),
        4 => "\r\n,\"".repeat(rng.below(20) as usize),
        _ => format!("v{}", rng.next()),
    }
}

fn cell(rng: &mut Rng) -> Cell {
    match rng.below(6) {
        0 => Cell::Null,
        1 => Cell::Boolean(rng.below(2) == 0),
        2 => Cell::Integer(rng.next() as i64),
        3 => Cell::Float(f64::from_bits(rng.next())),
        _ => Cell::Text(text(rng)),
    }
}

fn name(rng: &mut Rng) -> String {
    match rng.below(10) {
        0 => "n".repeat(rng.below(600) as usize),
        1 => format!("c{}", rng.below(5000)),
        _ => rng.pick(NAMES).to_owned(),
    }
}

impl guest_sdk::bindings::Guest for Chaos {
    fn describe() -> Vec<FunctionInfo> {
        let p = |name: &str, default: &str, doc: &str| Param {
            name: name.into(),
            type_: "int".into(),
            default: Some(default.into()),
            doc: doc.into(),
        };
        vec![FunctionInfo {
            name: "chaos.run".into(),
            doc: "Calls the host imports at random (a test of the host).".into(),
            params: vec![
                p("shards", "6", "How many shards."),
                p("seed", "0", "Drives every choice."),
                p("steps", "60", "Host calls per shard at most."),
            ],
        }]
    }

    fn run(_function: String, shard: Shard, out: &TableWriter) -> Result<(), String> {
        let payload: serde_json::Value =
            serde_json::from_str(&shard.payload).map_err(|e| e.to_string())?;
        let index = payload["index"]
            .as_u64()
            .ok_or_else(|| "bad payload".to_owned())?;
        let seed = payload["seed"].as_u64().unwrap_or(0);
        let steps = payload["steps"].as_u64().unwrap_or(60);
        let mut rng = Rng(seed.wrapping_mul(1_000_003) ^ index);
        let mut hog: Vec<Vec<u8>> = Vec::new();
        for _ in 0..rng.below(steps) + 1 {
            // Results of host calls are ignored on purpose: the next call
            // comes after an error as often as not.
            match rng.below(100) {
                0..=29 => {
                    let mut row = vec![("shard".to_owned(), Cell::Integer(index as i64))];
                    for _ in 0..rng.below(6) {
                        row.push((name(&mut rng), cell(&mut rng)));
                    }
                    let _ = out.push_row(&row);
                }
                30..=49 => {
                    let n = match rng.below(10) {
                        0 => 2 << 20,
                        1 => 0,
                        _ => rng.below(64 << 10),
                    };
                    let name = match rng.below(4) {
                        0 => format!("many/{}", rng.below(100_000)),
                        _ => rng.pick(OUTPUTS).to_owned(),
                    };
                    let _ = host::emit(&name, &vec![b'o'; n as usize]);
                }
                50..=64 => {
                    let level = [
                        Level::Trace,
                        Level::Debug,
                        Level::Info,
                        Level::Warn,
                        Level::Error,
                    ][rng.below(5) as usize];
                    host::log(level, &text(&mut rng));
                }
                65..=67 => host::progress(rng.next(), rng.next()),
                // A helper (refused at `limits.threads = 1`), asked odd things, kept
                // or dropped at random.
                68..=69 => {
                    if let Ok(h) = host::start_helper() {
                        let _ = h.send(text(&mut rng).as_bytes());
                        if rng.below(2) == 0 {
                            let _ = h.receive();
                        }
                        let _ = h.receive();
                    }
                }
                70..=79 => {
                    let ms = if rng.below(20) == 0 {
                        10_000
                    } else {
                        rng.below(30)
                    };
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
                80..=86 => {
                    let mb = if rng.below(10) == 0 {
                        128
                    } else {
                        rng.below(4)
                    };
                    hog.push(vec![1u8; (mb << 20) as usize]);
                }
                87..=89 => {
                    println!("{}", text(&mut rng));
                    eprintln!("{}", text(&mut rng));
                }
                90..=92 => return Err(text(&mut rng)),
                93 => panic!("chaos panics: {}", text(&mut rng)),
                94 => {
                    #[inline(never)]
                    fn rec(n: u64) -> u64 {
                        if n == 0 {
                            0
                        } else {
                            std::hint::black_box(rec(n - 1)).wrapping_add(1)
                        }
                    }
                    std::hint::black_box(rec(std::hint::black_box(u64::MAX)));
                }
                95 => loop {
                    std::hint::black_box(&hog);
                },
                _ => {
                    // A row with a column twice.
                    let _ = out.push_row(&[
                        ("shard".to_owned(), Cell::Integer(index as i64)),
                        ("d".to_owned(), Cell::Null),
                        ("d".to_owned(), Cell::Null),
                    ]);
                }
            }
        }
        std::hint::black_box(&hog);
        Ok(())
    }
}

impl guest_sdk::bindings::exports::engine::plugin::helper::Guest for Chaos {
    fn serve(request: Vec<u8>) -> Result<Vec<u8>, String> {
        match request.len() % 3 {
            0 => Ok(request),
            1 => Err(String::from_utf8_lossy(&request).into_owned()),
            _ => panic!("chaos helper panics"),
        }
    }
}

impl planner::Guest for Chaos {
    type Shards = Planned;

    fn plan(_function: String, args: String) -> Result<planner::Shards, String> {
        let args: serde_json::Value = serde_json::from_str(&args).map_err(|e| e.to_string())?;
        let n = args["shards"].as_i64().unwrap_or(6);
        let (seed, steps) = (&args["seed"], &args["steps"]);
        let shards: Vec<Shard> = (0..n)
            .map(|i| Shard {
                key: vec![("shard".into(), Cell::Integer(i))],
                payload: serde_json::json!({"index": i, "seed": seed, "steps": steps}).to_string(),
                reads: Vec::new(),
            })
            .collect();
        Ok(planner::Shards::new(Planned(std::cell::RefCell::new(
            shards.into_iter(),
        ))))
    }
}

/// The planned shards, handed out a page at a time.
struct Planned(std::cell::RefCell<std::vec::IntoIter<Shard>>);

impl planner::GuestShards for Planned {
    fn next(&self, max: u32) -> Result<Vec<Shard>, String> {
        Ok(self.0.borrow_mut().by_ref().take(max as usize).collect())
    }
}

// Only in the wasm build: natively the exports' names are no linker symbols
// (natively, the guest is only built, never used).
#[cfg(target_arch = "wasm32")]
guest_sdk::bindings::__export_plugin!(Chaos with_types_in guest_sdk::bindings);
