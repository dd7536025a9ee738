//! The smallest plugin: one function, one shard per name, one row per shard.

use guest_sdk::{Call, Function, Param, Plugin, Result, Row, Shard, Shards, Table};
use serde::{Deserialize, Serialize};

struct Hello;

/// What one shard needs: `run` sees only its shard, so the plan puts the
/// greeting and the repeat count in every payload.
#[derive(Serialize, Deserialize)]
struct Greet {
    name: String,
    greeting: String,
    repeat: i64,
}

impl Plugin for Hello {
    fn describe() -> Vec<Function> {
        vec![
            Function::new("hello.greet", "Greet each name; one shard per name.")
                .param(Param::new("names", "list<string>", "Who to greet."))
                .param(Param::new("greeting", "string", "The word to greet with.").default("hello"))
                .param(Param::new("repeat", "int", "How many rows per name.").default(1)),
        ]
    }

    fn plan(call: &Call) -> Result<Shards> {
        let names: Vec<String> = call.arg("names")?;
        let greeting: String = call.arg("greeting")?;
        let repeat: i64 = call.arg("repeat")?;
        names
            .iter()
            .map(|n| {
                Shard::new().key("name", n.as_str()).payload(Greet {
                    name: n.clone(),
                    greeting: greeting.clone(),
                    repeat,
                })
            })
            .collect()
    }

    fn run(_function: &str, shard: &Shard, out: &mut Table) -> Result<()> {
        let Greet {
            name,
            greeting,
            repeat,
        } = shard.get()?;
        for i in 0..repeat {
            out.push(
                Row::new()
                    .set("name", name.as_str())
                    .set("round", i)
                    .set("message", format!("{greeting}, {name}!"))
                    .set("letters", name.chars().count()),
            )?;
        }
        Ok(())
    }
}

guest_sdk::export!(Hello);

#[cfg(test)]
mod tests {
    use super::Hello;
    use guest_sdk::testing;

    #[test]
    fn greets_every_name() {
        let rows = testing::call::<Hello>("hello.greet", r#"{"names": ["ada", "alan"]}"#).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].get("message"), Some(&"hello, alan!".into()));
    }
}
