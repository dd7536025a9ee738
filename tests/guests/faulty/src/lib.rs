//! A plugin for tests: `faulty.misbehave` plans `shards` shards; shard `bad`
//! misbehaves as `how` says, the others compute a row honestly.

use guest_sdk::{Call, Function, Param, Plugin, Result, Row, Shard, Table, bail};

struct Faulty;

impl Plugin for Faulty {
    fn describe() -> Vec<Function> {
        vec![
            Function::new("faulty.misbehave", "Shard `bad` misbehaves as `how` says; the others square their index.")
                .param(Param::new("shards", "int", "How many shards.").default(4))
                .param(Param::new("bad", "int", "Which shard misbehaves (-1: none).").default(-1))
                .param(Param::new("how", "string", "trap | error | spin | alloc | stack | rows | cell | log | badrow | random").default("trap")),
        ]
    }

    fn plan(call: &Call) -> Result<Vec<Shard>> {
        let n: i64 = call.arg("shards")?;
        (0..n).map(|i| Shard::new().key("shard", i).payload(i)).collect()
    }

    fn run(call: &Call, shard: &Shard, out: &mut Table) -> Result<()> {
        let i: i64 = shard.get()?;
        let bad: i64 = call.arg("bad")?;
        let how: String = call.arg("how")?;
        if i == bad {
            misbehave(&how, out)?;
        }
        let mut buf = [0u8; 8];
        getrandom::fill(&mut buf).map_err(|e| guest_sdk::Error::new(e))?;
        out.push(
            Row::new()
                .set("shard", i)
                .set("square", i * i)
                .set("random", (u64::from_le_bytes(buf) % 1_000_000) as i64),
        )
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
        "cell" => out.push(Row::new().set("huge", "x".repeat(512 << 20))),
        "log" => loop {
            guest_sdk::info!("{}", "spam ".repeat(1000));
        },
        "badrow" => out.push(Row::new().set("", 1)),
        other => bail!("unknown misbehaviour `{other}`"),
    }
}

guest_sdk::export!(Faulty);
