//! The smallest plugin: one function, one shard per name, one row per shard.

use guest_sdk::{Call, Function, Param, Plugin, Result, Row, Shard, Table};

struct Hello;

impl Plugin for Hello {
    fn describe() -> Vec<Function> {
        vec![
            Function::new("hello.greet", "Greet each name; one shard per name.")
                .param(Param::new("names", "list<string>", "Who to greet."))
                .param(Param::new("greeting", "string", "The word to greet with.").default("hello"))
                .param(Param::new("repeat", "int", "How many rows per name.").default(1)),
        ]
    }

    fn plan(call: &Call) -> Result<Vec<Shard>> {
        let names: Vec<String> = call.arg("names")?;
        names
            .iter()
            .map(|n| Shard::new().key("name", n.as_str()).payload(n))
            .collect()
    }

    fn run(call: &Call, shard: &Shard, out: &mut Table) -> Result<()> {
        let name: String = shard.get()?;
        let greeting: String = call.arg("greeting")?;
        for i in 0..call.arg::<i64>("repeat")? {
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
