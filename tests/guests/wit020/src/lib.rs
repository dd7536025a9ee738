//! A plugin built against `engine:plugin@0.2.0` (whose `plan` returned every
//! shard in one list; 0.3.0 hands them out a page at a time): the engine must
//! refuse it, saying what changed. The WIT below is 0.2.0's, trimmed of its
//! comments.

wit_bindgen::generate!({
    inline: r#"
        package engine:plugin@0.2.0;

        interface types {
            variant cell {
                null,
                boolean(bool),
                integer(s64),
                float(f64),
                text(string),
            }

            record param {
                name: string,
                %type: string,
                default: option<string>,
                doc: string,
            }

            record function-info {
                name: string,
                doc: string,
                params: list<param>,
            }

            record shard {
                key: list<tuple<string, cell>>,
                payload: string,
                reads: list<string>,
            }
        }

        interface host {
            use types.{cell};

            enum level { trace, debug, info, warn, error }

            log: func(level: level, message: string);

            progress: func(done: u64, total: u64);

            emit: func(name: string, data: list<u8>) -> result<_, string>;

            resource table-writer {
                push-row: func(row: list<tuple<string, cell>>) -> result<_, string>;
            }
        }

        world plugin {
            use types.{function-info, shard};
            use host.{table-writer};

            import host;

            export describe: func() -> list<function-info>;

            export plan: func(function: string, args: string) -> result<list<shard>, string>;

            export run: func(function: string, shard: shard, out: borrow<table-writer>) -> result<_, string>;
        }
    "#,
    world: "plugin",
});

struct Old;

impl Guest for Old {
    fn describe() -> Vec<FunctionInfo> {
        engine::plugin::host::log(engine::plugin::host::Level::Info, "describing");
        vec![FunctionInfo {
            name: "wit020.old".into(),
            doc: "Built against WIT 0.2.0.".into(),
            params: Vec::new(),
        }]
    }

    fn plan(_function: String, _args: String) -> Result<Vec<Shard>, String> {
        Ok(Vec::new())
    }

    fn run(
        _function: String,
        _shard: Shard,
        _out: &engine::plugin::host::TableWriter,
    ) -> Result<(), String> {
        Ok(())
    }
}

export!(Old);
