//! The command line: one subcommand per user job.
//!
//! (Over 600 lines: the clap definitions of every command, whose doc comments
//! are the CLI's help, and one function per command.)

use crate::orchestrator::progress::ProgressMode;
use crate::orchestrator::{self, RunOptions};
use crate::plugins::{self, SearchPath};
use crate::runtime::Runtime;
use crate::text::{escape_controls, one_line, truncate};
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "engine",
    version,
    about = "Run WebAssembly benchmark functions as sharded, sandboxed runs"
)]
pub struct Cli {
    /// More logging (-v info, -vv debug); `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors and the final summary.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the function a config names and write its table.
    Run(RunArgs),
    /// Check a config (and its function and arguments) without running it.
    Validate(ValidateArgs),
    /// Work on a published run: claim shards from the store until all are done
    /// (what the `processes` and `kubernetes` backends start).
    Worker(WorkerArgs),
    /// Submit a run to Kubernetes: a ConfigMap with the config and a Job that
    /// runs `engine run` on it (the orchestrator then starts worker pods).
    Submit(SubmitArgs),
    /// Show a run's progress from the store alone.
    Status(StatusArgs),
    /// List the runs in a store, with their progress.
    Runs(RunsArgs),
    /// Show the cell cache's size; `prune` deletes old cells.
    Cache(CacheArgs),
    /// Create a plugin crate NAME that builds for wasm32-wasip2 as it is.
    New(NewArgs),
    /// Summarise a result table: a leaderboard per metric, optionally an HTML report.
    Report(ReportArgs),
    /// List the functions on the plugin search path, with their parameters.
    Functions(FunctionsArgs),
}

/// The arguments of `engine run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The run's `config.toml` (or `.json`).
    pub config: PathBuf,
    /// Write the table here instead of `output.path`.
    #[arg(long)]
    pub output: Option<String>,
    /// Mount this directory read-only as the guest's data directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Number of workers (overrides `cluster.workers`).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Look for plugins here first (repeatable).
    #[arg(long = "plugins", value_name = "DIR")]
    pub plugins: Vec<PathBuf>,
    /// Run every cell: reuse none from the cell cache, and keep none there.
    #[arg(long)]
    pub no_cache: bool,
    /// Run again the cells of this run whose part is an error (after raising
    /// `limits.timeout`, say; the limits are not part of the run id).
    #[arg(long)]
    pub rerun_failed: bool,
    /// End with a summary of the results table: `auto` when stderr is a
    /// terminal and not `--quiet`; `--summary` alone means `always`.
    #[arg(
        long,
        value_name = "WHEN",
        default_value = "auto",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "always"
    )]
    pub summary: When,
}

/// The arguments of `engine validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    pub config: PathBuf,
    #[arg(long = "plugins", value_name = "DIR")]
    pub plugins: Vec<PathBuf>,
}

/// The arguments of `engine worker`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The run store (`cluster.store` of the run).
    #[arg(long)]
    pub store: String,
    /// The run id.
    #[arg(long)]
    pub run: String,
    #[arg(long)]
    pub tenant: Option<String>,
    /// This worker's name (default: host name and pid).
    #[arg(long)]
    pub id: Option<String>,
    /// Worker threads in this process.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Where this machine mounts the run's data directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// The arguments of `engine submit`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The run's `config.toml` (or `.json`); validated here first.
    pub config: PathBuf,
    /// Namespace of the Job (default: `cluster.namespace`, else the kubeconfig's).
    #[arg(long)]
    pub namespace: Option<String>,
    /// The engine image (default: `cluster.worker_config.image`).
    #[arg(long)]
    pub image: Option<String>,
    /// Look for plugins here first when validating (repeatable).
    #[arg(long = "plugins", value_name = "DIR")]
    pub plugins: Vec<PathBuf>,
}

/// The arguments of `engine status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The run id (printed by `engine run -v` and in the store as `runs/<id>`).
    pub run: String,
    /// The run store (`cluster.store`).
    #[arg(long)]
    pub store: String,
    #[arg(long)]
    pub tenant: Option<String>,
}

/// The arguments of `engine runs`.
#[derive(Debug, clap::Args)]
pub struct RunsArgs {
    /// The store (`cluster.store`; a local run without one keeps its cache,
    /// but no runs, in `.engine` beside its config).
    #[arg(long, default_value = ".engine")]
    pub store: String,
    #[arg(long)]
    pub tenant: Option<String>,
}

/// The arguments of `engine cache`.
#[derive(Debug, clap::Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub action: Option<CacheAction>,
    /// The store whose cache this is (`cluster.store`; for a local run
    /// without one, `.engine` beside its config).
    #[arg(long, global = true, default_value = ".engine")]
    pub store: String,
    #[arg(long, global = true)]
    pub tenant: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// Delete the cells written longer ago than `--older-than`.
    Prune {
        /// E.g. `30d`, `12h`.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
    },
}

/// The arguments of `engine new`.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The crate name: lowercase letters, digits, `-`, `_` (the function is `NAME.run`).
    pub name: String,
    /// Create it here (default `./NAME`); must not exist or be empty.
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,
    /// The engine's `guest-sdk` folder (default: beside this executable, else `ENGINE_GUEST_SDK`).
    #[arg(long, value_name = "PATH")]
    pub sdk: Option<PathBuf>,
}

/// The arguments of `engine report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The result CSV (what `engine run` wrote).
    pub results: PathBuf,
    /// Also write a self-contained HTML report with charts here.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Rank by this column (repeatable; default: the numeric columns ending in `_score`).
    #[arg(long = "metric", value_name = "M")]
    pub metrics: Vec<String>,
}

/// The arguments of `engine functions`.
#[derive(Debug, clap::Args)]
pub struct FunctionsArgs {
    #[arg(long = "plugins", value_name = "DIR")]
    pub plugins: Vec<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// When to do something meant for a person at a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum When {
    Auto,
    Always,
    Never,
}

/// Result tables larger than this are not read back for the run's summary.
const SUMMARY_MAX_BYTES: u64 = 16 << 20;

/// The results table written to `output`, summed up in a few lines.
async fn results_summary(output: &str) -> Result<String> {
    use object_store::ObjectStore as _;
    let location = crate::store::Location::parse(output)?;
    let size = location.store.head(&location.path).await?.size;
    if size > SUMMARY_MAX_BYTES {
        return Ok(format!(
            "{output}: {} MB, too large for a summary here; see `engine report`\n",
            size >> 20
        ));
    }
    let bytes = location.store.get(&location.path).await?.bytes().await?;
    let data = crate::report::parse(&String::from_utf8_lossy(&bytes))?;
    // `COLUMNS` if the shell exports it; most terminals are at least this wide.
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(100);
    Ok(crate::report::render_summary(&data, output, width))
}

/// Run a parsed command line; errors are printed by `main`.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run_command(args, cli.quiet).await,
        Command::Validate(args) => validate_command(args).await,
        Command::Worker(args) => worker_command(args).await,
        Command::Submit(args) => submit_command(args).await,
        Command::Status(args) => status_command(args).await,
        Command::Runs(args) => runs_command(args).await,
        Command::Cache(args) => cache_command(args).await,
        Command::New(args) => new_command(args),
        Command::Report(args) => report_command(args),
        Command::Functions(args) => functions_command(args),
    }
}

/// `engine run`: the whole run, then one line (and maybe a table) summing it up.
async fn run_command(args: RunArgs, quiet: bool) -> Result<ExitCode> {
    let RunArgs {
        config,
        output,
        data,
        workers,
        plugins,
        no_cache,
        rerun_failed,
        summary,
    } = args;
    let progress = if quiet {
        ProgressMode::Quiet
    } else {
        ProgressMode::Auto
    };

    let summary = match summary {
        When::Always => true,
        When::Never => false,
        When::Auto => !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let opts = RunOptions {
        config,
        output,
        data,
        workers,
        plugins,
        progress,
        no_cache,
        rerun_failed,
    };
    let s = orchestrator::run(opts).await?;
    let ok = s.shards - s.failed;
    let mut earlier = Vec::new();
    if s.resumed > 0 {
        earlier.push(format!("{} from an earlier run", s.resumed));
    }
    match s.reused {
        Some(n) if n > 0 => earlier.push(format!("{n} from the cache")),
        Some(_) => {}
        None => earlier.push("cache off".into()),
    }
    if s.reran > 0 {
        earlier.push(format!("{} failed ones rerun", s.reran));
    }
    let resumed = match earlier.is_empty() {
        true => String::new(),
        false => format!(" ({})", earlier.join(", ")),
    };
    eprintln!(
        "{}: {} shards ({ok} ok, {} failed){resumed}, {} rows in {:.2}s -> {}",
        if s.failed == 0 {
            "done"
        } else {
            "done with failures"
        },
        s.shards,
        s.failed,
        s.rows,
        s.elapsed.as_secs_f64(),
        s.output
    );
    if let Some(r) = &s.requests {
        let (workers, reporting) = r.workers;
        let total = r.orchestrator.add(&workers).total();
        let (waiting, waited) = r.waiting;
        eprintln!(
            "store requests: {total} ({:.2} a shard); this process {}: {}; {reporting} worker processes {}: {}; while waiting {:.1}/s",
            total as f64 / s.shards.max(1) as f64,
            r.orchestrator.total(),
            r.orchestrator,
            workers.total(),
            workers,
            waiting.total() as f64 / waited.as_secs_f64().max(1e-3),
        );
    }
    if summary {
        match results_summary(&s.output).await {
            Ok(text) => eprint!("\n{}", escape_controls(&text)),
            Err(e) => tracing::warn!("no summary: cannot read `{}` back: {e:#}", s.output),
        }
    }
    Ok(if s.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `engine validate`: everything but running.
async fn validate_command(args: ValidateArgs) -> Result<ExitCode> {
    let ValidateArgs { config, plugins } = args;

    let opts = RunOptions::validate_only(config.clone(), plugins);
    let runtime = tokio::task::block_in_place(|| Runtime::new(1))?;
    let p = orchestrator::prepare_with_data(&runtime, &opts).await?;
    // Planned a page at a time and counted; nothing is kept.
    let shards = tokio::task::block_in_place(|| orchestrator::plan(&runtime, &p, |_| Ok(())))?;
    use std::io::Write;
    writeln!(
        std::io::stdout(),
        "ok: `{}` calls `{}` from `{}`: {} shards, output `{}`",
        config.display(),
        p.config.run.function,
        p.component_path.display(),
        shards,
        p.output
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `engine worker`: work on a run published in a store.
async fn worker_command(args: WorkerArgs) -> Result<ExitCode> {
    let WorkerArgs {
        store,
        run,
        tenant,
        id,
        threads,
        data,
    } = args;

    let opts = crate::work::ServeOptions {
        store,
        run,
        tenant,
        id,
        threads,
        data,
    };
    crate::work::serve(opts).await?;
    Ok(ExitCode::SUCCESS)
}

/// `engine submit`: the orchestrator as a Job in the cluster.
async fn submit_command(args: SubmitArgs) -> Result<ExitCode> {
    let SubmitArgs {
        config,
        namespace,
        image,
        plugins,
    } = args;

    let opts = RunOptions::validate_only(config.clone(), plugins);
    let runtime = tokio::task::block_in_place(|| Runtime::new(1))?;
    let p = orchestrator::prepare_with_data(&runtime, &opts).await?;
    let run_id = orchestrator::run_id(&p);
    let submit = crate::backend::kubernetes::SubmitOptions {
        cluster: &p.config.cluster,
        run_id: &run_id,
        config_path: &config,
        output: &p.output,
        store: &p.store,
        tenant: p.config.run.tenant.as_deref(),
        data: p.data.as_ref(),
        credentials: p.config.output.credentials(),
        namespace,
        image,
    };
    let s = crate::backend::kubernetes::submit(submit).await?;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Some(data) = &s.data {
        writeln!(out, "run.data uploaded to {data}")?;
    }
    writeln!(out, "job/{} created in namespace {}", s.job, s.namespace)?;
    writeln!(out, "kubectl logs -f job/{} -n {}", s.job, s.namespace)?;
    Ok(ExitCode::SUCCESS)
}

/// `engine status`: a run's progress, from the store alone.
async fn status_command(args: StatusArgs) -> Result<ExitCode> {
    let StatusArgs { run, store, tenant } = args;
    status(&run, &store, tenant.as_deref()).await
}

/// `engine runs`: the runs in a store, a line each.
async fn runs_command(args: RunsArgs) -> Result<ExitCode> {
    let RunsArgs { store, tenant } = args;
    use std::io::Write;
    let base = crate::store::Location::parse(&store)?;
    let runs = crate::work::list_runs(&base, tenant.as_deref()).await?;
    let mut out = std::io::stdout().lock();
    if runs.is_empty() {
        writeln!(out, "no runs in `{store}`")?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<16}  {:>8}  {:>8}  {:>6}  {:<20}  function",
        "run", "shards", "finished", "failed", "last part"
    )?;
    for r in runs {
        let shards = r.shards.map_or("?".into(), |n| n.to_string());
        let when = r
            .last_part
            .map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string());
        let function = match (&r.function, r.format) {
            (Some(f), Some(v)) if v == u64::from(crate::work::FORMAT) => one_line(f).into_owned(),
            (Some(f), v) => format!(
                "{} (run format {}: not resumable by this engine)",
                one_line(f),
                v.map_or("?".into(), |v| v.to_string())
            ),
            (None, _) => "? (no readable run.json)".into(),
        };
        writeln!(
            out,
            "{:<16}  {shards:>8}  {:>8}  {:>6}  {when:<20}  {function}",
            one_line(&r.id),
            r.finished,
            r.failed
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `engine cache`: how much the cell cache holds; `prune` deletes old cells.
async fn cache_command(args: CacheArgs) -> Result<ExitCode> {
    let CacheArgs {
        action,
        store,
        tenant,
    } = args;
    use crate::work::cache;
    let base = crate::store::Location::parse(&store)?;
    let folder = cache::folder(&base, tenant.as_deref());
    match action {
        None => {
            let u = cache::usage(&folder).await?;
            let written = u.written.map_or(String::new(), |(old, new)| {
                format!(
                    ", written {} to {}",
                    old.format("%Y-%m-%d %H:%M"),
                    new.format("%Y-%m-%d %H:%M")
                )
            });
            println!(
                "{}: {} cells, {}{written}",
                folder.root.display,
                u.cells,
                crate::text::bytes(u.bytes)
            );
        }
        Some(CacheAction::Prune { older_than }) => {
            let (n, bytes) = cache::prune(&folder, older_than).await?;
            println!(
                "{}: deleted {n} cells ({}) written more than {} ago",
                folder.root.display,
                crate::text::bytes(bytes),
                humantime::format_duration(older_than)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `engine new`: a plugin crate that builds as it is.
fn new_command(args: NewArgs) -> Result<ExitCode> {
    let NewArgs { name, path, sdk } = args;

    let made = crate::scaffold::scaffold(&crate::scaffold::NewOptions { name, path, sdk })?;
    use std::io::Write;
    let dir = made.dir.display();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "created `{dir}`: the function `{}` (guest SDK: `{}`)",
        made.function,
        made.sdk.display()
    )?;
    writeln!(out, "next:")?;
    writeln!(out, "  cd {dir}")?;
    writeln!(
        out,
        "  cargo test                                   # natively, no wasm"
    )?;
    writeln!(out, "  cargo build --target wasm32-wasip2 --release")?;
    writeln!(
        out,
        "  engine run config.toml --plugins target/wasm32-wasip2/release"
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `engine report`: leaderboards, and an HTML report.
fn report_command(args: ReportArgs) -> Result<ExitCode> {
    let ReportArgs {
        results,
        html,
        metrics,
    } = args;

    let data = crate::report::load(&results)?;
    let report = crate::report::analyse(&data, &results.display().to_string(), &metrics)?;
    use std::io::Write;
    // What produced the table, when `engine run` left its record beside it.
    let meta = crate::report::meta_path(&results);
    match std::fs::read(&meta).map(|b| serde_json::from_slice::<serde_json::Value>(&b)) {
        Ok(Ok(meta)) => write!(
            std::io::stdout(),
            "{}",
            escape_controls(&crate::report::render_provenance(&meta))
        )?,
        Ok(Err(e)) => tracing::warn!("`{}` is not a provenance record: {e}", meta.display()),
        Err(_) => {}
    }
    write!(
        std::io::stdout(),
        "{}",
        escape_controls(&crate::report::render_text(&report))
    )?;
    if let Some(html) = html {
        std::fs::write(&html, crate::report::render_html(&report))
            .map_err(|e| anyhow::anyhow!("cannot write the report `{}`: {e}", html.display()))?;
        eprintln!("wrote {}", html.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `engine functions`: what the plugin path offers.
fn functions_command(args: FunctionsArgs) -> Result<ExitCode> {
    let FunctionsArgs { plugins, json } = args;

    let search = SearchPath::new(&plugins);
    let catalog = tokio::task::block_in_place(|| -> Result<_> {
        let runtime = Runtime::new(1)?;
        Ok(plugins::catalog(&runtime, &search))
    })?;
    print_functions(&search, catalog, json)
}

async fn status(run: &str, store_url: &str, tenant: Option<&str>) -> Result<ExitCode> {
    use crate::work::queue::QueueState;
    use std::io::Write;
    let base = crate::store::Location::parse(store_url)?;
    let store = crate::store::RunStore::new(&base, tenant, run);
    let Some(spec) = store.get("run.json").await? else {
        anyhow::bail!("no run `{run}` in the store `{store_url}`");
    };
    let spec: crate::work::RunSpec = serde_json::from_slice(&spec)?;
    // One look: every process with a heartbeat counts as alive (liveness is
    // judged by watching beats change, which one look cannot).
    let lease = std::time::Duration::from_millis(spec.lease_ms);
    let state = QueueState::read(&store, lease, &mut Default::default()).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "run        {run}")?;
    writeln!(out, "function   {}", one_line(&spec.function))?;
    writeln!(out, "shards     {}", spec.shards)?;
    writeln!(
        out,
        "finished   {} ({} failed)",
        state.done.len(),
        state.failed.len()
    )?;
    writeln!(out, "running    {}", state.running())?;
    writeln!(
        out,
        "waiting    {}",
        spec.shards
            .saturating_sub(state.done.len() + state.running())
    )?;
    writeln!(out, "attempts   {}", state.attempts)?;
    let mut alive: Vec<_> = state.alive.iter().collect();
    alive.sort_by(|a, b| a.0.cmp(b.0));
    writeln!(
        out,
        "workers    {} alive{}",
        alive.len(),
        if alive.is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                alive
                    .iter()
                    .map(|(s, _)| one_line(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    )?;
    Ok(ExitCode::SUCCESS)
}

fn print_functions(
    search: &SearchPath,
    catalog: Vec<(PathBuf, Result<Vec<crate::runtime::FunctionInfo>>)>,
    json: bool,
) -> Result<ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if json {
        let items: Vec<_> = catalog
            .iter()
            .filter_map(|(path, f)| {
                f.as_ref()
                    .ok()
                    .map(|f| serde_json::json!({ "component": path, "functions": f }))
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&items)?)?;
    }
    let mut any = false;
    for (path, functions) in &catalog {
        match functions {
            Ok(functions) if !json => {
                for f in functions {
                    any = true;
                    let mut text = Vec::new();
                    write_function(&mut text, f, path)?;
                    out.write_all(escape_controls(&String::from_utf8_lossy(&text)).as_bytes())?;
                }
            }
            Ok(_) => any = true,
            Err(e) => eprintln!(
                "warning: skipped `{}`: {}",
                path.display(),
                escape_controls(&format!("{e:#}"))
            ),
        }
    }
    if !any {
        let dirs: Vec<String> = search
            .dirs
            .iter()
            .map(|d| format!("`{}`", d.display()))
            .collect();
        eprintln!("no functions found; searched {}", dirs.join(", "));
        eprintln!("hint: build the plugins with `scripts/demo`, or pass `--plugins DIR`");
    }
    Ok(ExitCode::SUCCESS)
}

/// One function of `engine functions`: name, doc, parameters.
fn write_function(
    out: &mut impl std::io::Write,
    f: &crate::runtime::FunctionInfo,
    path: &std::path::Path,
) -> std::io::Result<()> {
    writeln!(out, "{}  ({})", f.name, path.display())?;
    for line in f.doc.lines() {
        writeln!(out, "    {line}")?;
    }
    let width = f.params.iter().map(|p| p.name.len()).max().unwrap_or(0);
    let twidth = f.params.iter().map(|p| p.ty.len()).max().unwrap_or(0);
    for p in &f.params {
        let default = match &p.default {
            Some(d) => format!("default {d}"),
            None => "required".into(),
        };
        writeln!(out, "    {:width$}  {:twidth$}  {default}", p.name, p.ty)?;
        for line in p.doc.lines() {
            writeln!(out, "    {:width$}    {line}", "")?;
        }
    }
    writeln!(out)
}

/// The whole program: parse arguments, set up logging, run, report errors.
/// `main.rs` calls this; so does the test suite's copy of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::env::var_os("NO_COLOR").is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
        .without_time()
        .with_target(false)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        // `engine functions | head`: a closed stdout is not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            // Messages may quote guest text: cut long ones, no control characters.
            let safe = |t: String| escape_controls(&truncate(&t, 16 << 10)).into_owned();
            eprintln!("error: {}", safe(e.to_string()));
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {}", safe(cause.to_string()));
            }
            if e.downcast_ref::<crate::InputError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
