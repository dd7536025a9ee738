//! The engine side of `bench/compare.sh`. Each function's Dask twin is in
//! `bench/dask_peer.py`; keep the two doing the same work.

use guest_sdk::{Call, Function, Param, Plugin, Result, Row, Shard, Shards, Table};

struct Bench;

impl Plugin for Bench {
    fn describe() -> Vec<Function> {
        vec![
            Function::new(
                "bench.noop",
                "One row per shard and nothing else: the engine's own cost per shard.",
            )
            .param(Param::new("shards", "int", "How many shards.")),
            Function::new(
                "bench.spin",
                "CPU-bound shards: a dependent float loop of `work` steps each.",
            )
            .param(Param::new("shards", "int", "How many shards."))
            .param(Param::new("work", "int", "Loop steps per shard.")),
            Function::new(
                "bench.rows",
                "Row-heavy shards: `rows` rows of four columns each.",
            )
            .param(Param::new("shards", "int", "How many shards."))
            .param(Param::new("rows", "int", "Rows per shard.")),
            Function::new(
                "bench.sleep",
                "Shards that hold their claim without using the CPU: each sleeps `ms` ms.",
            )
            .param(Param::new("shards", "int", "How many shards."))
            .param(Param::new("ms", "int", "Milliseconds a shard sleeps.")),
        ]
    }

    /// The payload is `[i, n]`: the shard's index and its `work`, `rows` or `ms`
    /// (`run` sees only the shard). Made as the engine takes them: a plan of
    /// ten million shards is never a list in memory.
    fn plan(call: &Call) -> Result<Shards> {
        let shards: i64 = call.arg("shards")?;
        let n: i64 = match call.function() {
            "bench.spin" => call.arg("work")?,
            "bench.rows" => call.arg("rows")?,
            "bench.sleep" => call.arg("ms")?,
            _ => 0,
        };
        Ok(Shards::lazy(
            (0..shards).map(move |i| Shard::new().payload((i, n))),
        ))
    }

    fn run(function: &str, shard: &Shard, out: &mut Table) -> Result<()> {
        let (i, n): (i64, i64) = shard.get()?;
        match function {
            "bench.spin" => {
                let x = spin(n, i);
                out.push(Row::new().set("shard", i).set("x", x))
            }
            "bench.rows" => {
                let rows = n;
                for r in 0..rows {
                    out.push(
                        Row::new()
                            .set("shard", i)
                            .set("row", r)
                            .set("value", (i * rows + r) as f64 * 0.5)
                            .set("label", if r % 2 == 0 { "even" } else { "odd" }),
                    )?;
                }
                Ok(())
            }
            "bench.sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(n as u64));
                out.push(Row::new().set("shard", i))
            }
            _ => out.push(Row::new().set("shard", i)),
        }
    }
}

/// A chain of dependent multiply-adds the compiler cannot fold or vectorise.
pub fn spin(work: i64, seed: i64) -> f64 {
    let mut x = 1.0 + seed as f64 * 1e-9;
    for _ in 0..work {
        x = x * 1.000_000_1 + 1e-7;
        if x > 2.0 {
            x -= 1.0;
        }
    }
    x
}

guest_sdk::export!(Bench);

#[cfg(test)]
mod tests {
    use super::Bench;
    use guest_sdk::testing;

    #[test]
    fn each_function_yields_its_rows() {
        let rows = testing::call::<Bench>("bench.noop", r#"{"shards": 3}"#).unwrap();
        assert_eq!(rows.len(), 3);
        let rows = testing::call::<Bench>("bench.rows", r#"{"shards": 2, "rows": 5}"#).unwrap();
        assert_eq!(rows.len(), 10);
        let rows = testing::call::<Bench>("bench.spin", r#"{"shards": 1, "work": 1000}"#).unwrap();
        assert!(rows[0].get("x").is_some());
    }
}
