//! `engine`: see `engine::cli`.

fn main() -> std::process::ExitCode {
    engine::cli::main()
}
