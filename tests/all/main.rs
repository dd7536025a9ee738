//! The integration tests: one binary, guests built once by `tests/build.rs`.

mod util;

mod cli;
mod deepecho;
mod local_run;
mod ui;
