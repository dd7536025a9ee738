//! The integration tests: one binary, guests built once by `tests/build.rs`.

mod cluster;
mod util;

mod authoring;
mod cache;
mod chaos;
mod cli;
mod deepecho;
mod deploy;
mod hostile;
mod kubernetes;
mod local_run;
mod processes;
mod python_guest;
mod s3;
mod sandbox;
mod tenancy;
mod ui;
