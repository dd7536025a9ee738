//! A plugin built against `engine:plugin@0.0.9`, a version this engine does not
//! speak: the engine must refuse it with a message naming the file.

wit_bindgen::generate!({
    inline: r#"
        package engine:plugin@0.0.9;
        interface host {
            log: func(message: string);
        }
        world plugin {
            import host;
            export describe: func() -> list<string>;
        }
    "#,
    world: "plugin",
});

struct Old;

impl Guest for Old {
    fn describe() -> Vec<String> {
        engine::plugin::host::log("describing");
        vec!["old.function".into()]
    }
}

export!(Old);
