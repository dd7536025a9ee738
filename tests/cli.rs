//! The `engine` CLI, built inside the test package so the tests can run it as
//! a real process (`CARGO_BIN_EXE_engine-cli`).

fn main() -> std::process::ExitCode {
    engine::cli::main()
}
