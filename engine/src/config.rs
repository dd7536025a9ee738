//! `config.toml` (or the same structure as JSON): parse, then validate.
//!
//! Every error names the file, the line and column where TOML gives them, and
//! the field path, so a user can fix the config without reading our source.
//!
//! (Over 600 lines: the whole config format, its units, validation with
//! located errors, and their tests.)

use crate::runtime::FunctionInfo;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A config error: where, and what.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct ConfigError {
    /// `file:line:column`, or just `file` when the position is unknown.
    pub location: String,
    pub message: String,
}

/// The whole config file, as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub run: RunSection,
    #[serde(default, alias = "dask_cluster")]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub limits: Limits,
    pub output: OutputSection,
}

/// `[run]`: what to call.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Dotted function path, e.g. `deepecho.benchmark.run_benchmark`.
    pub function: String,
    /// Arguments, checked against the function's parameters.
    #[serde(default)]
    pub args: Map<String, Value>,
    /// The guest's read-only `/data`: a directory (relative to the config's
    /// folder) or an object-store URL (`s3://bucket/datasets/`, `file://…`).
    #[serde(default)]
    pub data: Option<String>,
    /// Seeds each shard's `wasi:random`, so runs are reproducible.
    #[serde(default)]
    pub seed: u64,
    /// The tenant this run belongs to (its own store prefix).
    #[serde(default)]
    pub tenant: Option<String>,
}

/// `[cluster]` (the reference runner's `[dask_cluster]`): where workers run.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    #[serde(default)]
    pub backend: Backend,
    #[serde(default, alias = "num_workers")]
    pub workers: Workers,
    #[serde(default)]
    pub worker_config: Option<WorkerConfig>,
    /// Kubernetes namespace (default: the kubeconfig's or in-cluster one).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Where the run's state lives: a local path, `file://…` or `s3://bucket/prefix`.
    /// Default: memory for `local`, `.engine/` beside the config for `processes`.
    #[serde(default)]
    pub store: Option<String>,
    /// A claimed shard whose worker has not sent a heartbeat for this long is
    /// offered again.
    #[serde(default = "default_lease", with = "duration_text")]
    pub lease: Duration,
}

/// The shortest `cluster.lease` accepted.
pub const MIN_LEASE: Duration = Duration::from_secs(1);

fn default_lease() -> Duration {
    Duration::from_secs(30)
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            backend: Backend::default(),
            workers: Workers::default(),
            worker_config: None,
            namespace: None,
            store: None,
            lease: default_lease(),
        }
    }
}

/// How workers come to exist.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Threads in this process.
    #[default]
    Local,
    /// `engine worker` processes on this machine.
    Processes,
    /// Worker pods.
    Kubernetes,
}

/// A fixed number of workers, or a range to scale within.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Workers {
    pub minimum: usize,
    pub maximum: usize,
}

impl Default for Workers {
    fn default() -> Self {
        let n = std::thread::available_parallelism().map_or(1, usize::from);
        Workers {
            minimum: n,
            maximum: n,
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        fn count<E: de::Error>(n: i64, what: &str) -> Result<usize, E> {
            usize::try_from(n)
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| E::custom(format!("{what} must be at least 1, got {n}")))
        }
        impl<'de> Visitor<'de> for V {
            type Value = Workers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of workers, or { minimum = N, maximum = M }")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Workers, E> {
                let n = count(n, "the number of workers")?;
                Ok(Workers {
                    minimum: n,
                    maximum: n,
                })
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Workers, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Workers, A::Error> {
                let (mut minimum, mut maximum) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "minimum" => minimum = Some(count(map.next_value()?, "`minimum`")?),
                        "maximum" => maximum = Some(count(map.next_value()?, "`maximum`")?),
                        other => {
                            return Err(de::Error::unknown_field(other, &["minimum", "maximum"]));
                        }
                    }
                }
                let minimum = minimum.ok_or_else(|| de::Error::missing_field("minimum"))?;
                let maximum = maximum.ok_or_else(|| de::Error::missing_field("maximum"))?;
                if minimum > maximum {
                    return Err(de::Error::custom(format!(
                        "`minimum` ({minimum}) is larger than `maximum` ({maximum})"
                    )));
                }
                Ok(Workers { minimum, maximum })
            }
        }
        d.deserialize_any(V)
    }
}

/// `[cluster.worker_config]`: what a worker pod looks like.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    #[serde(default)]
    pub image: Option<String>,
    /// `memory`, `cpu` and pass-through keys such as `nvidia.com/gpu`.
    #[serde(default)]
    pub resources: BTreeMap<String, Quantity>,
    /// The reference's shell set-up steps: refused, see the message.
    #[serde(default, skip_serializing)]
    pub setup: Option<Refused>,
}

/// A Kubernetes quantity written as a string (`"4G"`) or a number (`4`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Quantity {
    Number(f64),
    Text(String),
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quantity::Number(n) => write!(f, "{n}"),
            Quantity::Text(s) => f.write_str(s),
        }
    }
}

/// A key that exists in the reference runner's config but not here on purpose.
#[derive(Debug, Clone)]
pub struct Refused;

impl<'de> Deserialize<'de> for Refused {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(de::Error::custom(
            "shell `setup` steps are not supported: workers run only the WebAssembly component; \
             build what the function needs into the plugin",
        ))
    }
}

/// `[limits]`: per shard.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Guest linear memory, e.g. `"2G"` or `"512Mi"`.
    #[serde(with = "bytes_text")]
    pub memory: u64,
    /// Wall-clock time per attempt, e.g. `"30m"`.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Extra attempts for a shard that fails.
    pub retries: u32,
    /// Result bytes one shard may produce.
    #[serde(with = "bytes_text")]
    pub output_size: u64,
    /// Log bytes (stdout, stderr and `log`) one shard may produce.
    #[serde(with = "bytes_text")]
    pub log_size: u64,
    /// Most shards one call may plan.
    pub max_shards: usize,
    /// Side-output files one shard may write.
    pub outputs: u64,
    /// Distinct columns one shard's rows may use.
    pub columns: u64,
    /// Threads one shard may use: its own and its helpers' (see the guest SDK's
    /// `Helper`), at most [`MAX_THREADS`]. A plugin's results do not depend on it.
    pub threads: u32,
}

/// Most threads `limits.threads` may give one shard.
pub const MAX_THREADS: u32 = 16;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 1 << 30,
            timeout: Duration::from_secs(3600),
            retries: 0,
            output_size: 256 << 20,
            log_size: 1 << 20,
            max_shards: 1_000_000,
            outputs: 1000,
            columns: 1000,
            threads: 1,
        }
    }
}

/// `[output]`: where the table goes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// A local path, `file://…` or `s3://bucket/key.csv`; with `bucket`, the
    /// key inside that bucket (the reference runner's form).
    pub path: String,
    #[serde(default)]
    pub bucket: Option<String>,
    /// The reference's AWS access key id. Prefer the environment.
    #[serde(default, skip_serializing)]
    pub key: Option<String>,
    /// The reference's AWS secret key. Prefer the environment.
    #[serde(default, skip_serializing)]
    pub secret_key: Option<String>,
}

impl OutputSection {
    /// The output as one location string (`s3://bucket/path` when `bucket` is set).
    pub fn location(&self) -> String {
        match &self.bucket {
            Some(bucket) => format!("s3://{bucket}/{}", self.path.trim_start_matches('/')),
            None => self.path.clone(),
        }
    }

    /// Credentials written into the config, if any.
    pub fn credentials(&self) -> Option<(String, String)> {
        Some((self.key.clone()?, self.secret_key.clone()?))
    }
}

/// Parse a size such as `512M`, `2G`, `4Gi` or a plain number of bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as `512M` or `2G`"))?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "k" | "K" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" | "TB" => 1e12,
        "Ki" | "KiB" => 1024.0,
        "Mi" | "MiB" => 1024.0 * 1024.0,
        "Gi" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "Ti" | "TiB" => 1024.0f64.powi(4),
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}`; use K, M, G, T or Ki, Mi, Gi, Ti"
            ));
        }
    };
    Ok((num * mult) as u64)
}

mod bytes_text {
    use serde::{Deserialize, Deserializer, Serializer, de};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Raw::deserialize(d)
            .map_err(|_| de::Error::custom("expected a size such as `512M` or `2G`"))?
        {
            Raw::N(n) => Ok(n),
            Raw::S(s) => super::parse_bytes(&s).map_err(de::Error::custom),
        }
    }

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
    }
}

mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer, de};
    use std::time::Duration;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let raw = Raw::deserialize(d)
            .map_err(|_| de::Error::custom("expected a duration such as `30s` or `1h 30m`"))?;
        let duration = match raw {
            Raw::N(n) => Duration::from_secs(n),
            Raw::S(s) => humantime::parse_duration(&s).map_err(|e| {
                de::Error::custom(format!(
                    "`{s}` is not a duration such as `30s` or `1h 30m`: {e}"
                ))
            })?,
        };
        if duration.is_zero() {
            return Err(de::Error::custom("the timeout must be longer than zero"));
        }
        Ok(duration)
    }

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }
}

// ---------------------------------------------------------------- loading

/// The text of a config file, kept to point errors at lines and columns.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
    json: bool,
}

impl Source {
    /// Read a config file; `.json` files are JSON, everything else TOML.
    pub fn read(path: &Path) -> Result<Source, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            location: path.display().to_string(),
            message: format!("cannot read the config file: {e}"),
        })?;
        Ok(Source::from_text(path, text))
    }

    /// A config from text; `path` names it in errors and decides the format.
    pub fn from_text(path: &Path, text: String) -> Source {
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        Source {
            path: path.to_owned(),
            text,
            json,
        }
    }

    /// An error at a byte offset (or at the file when `None`).
    pub fn error_at(&self, offset: Option<usize>, message: impl Into<String>) -> ConfigError {
        let location = match offset {
            Some(offset) => {
                let (line, col) = line_col(&self.text, offset);
                format!("{}:{line}:{col}", self.path.display())
            }
            None => self.path.display().to_string(),
        };
        ConfigError {
            location,
            message: message.into(),
        }
    }

    /// The byte offset of a key in the TOML document (`["run", "args", "moels"]`).
    pub fn key_offset(&self, path: &[&str]) -> Option<usize> {
        if self.json {
            return json_key_offset(&self.text, path);
        }
        let doc = toml::de::DeTable::parse(&self.text).ok()?;
        let mut table = doc.get_ref();
        for (i, part) in path.iter().enumerate() {
            let (key, value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *part)?;
            if i + 1 == path.len() {
                return Some(key.span().start);
            }
            match value.get_ref() {
                toml::de::DeValue::Table(t) => table = t,
                _ => return None,
            }
        }
        None
    }

    /// Parse into a [`Config`].
    pub fn parse(&self) -> Result<Config, ConfigError> {
        let config = if self.json {
            let mut de = serde_json::Deserializer::from_str(&self.text);
            serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let inner = e.inner();
                let offset = offset_of_line_col(&self.text, inner.line(), inner.column());
                self.error_at(
                    Some(offset),
                    with_path(e.path(), &strip_json_position(&inner.to_string())),
                )
            })?
        } else {
            let de = toml::Deserializer::parse(&self.text)
                .map_err(|e| self.error_at(e.span().map(|s| s.start), e.message().to_owned()))?;
            serde_path_to_error::deserialize(de).map_err(|e| {
                let inner = e.inner();
                self.error_at(
                    inner.span().map(|s| s.start),
                    with_path(e.path(), inner.message()),
                )
            })?
        };
        self.check(config)
    }

    fn check(&self, config: Config) -> Result<Config, ConfigError> {
        if config.run.function.trim().is_empty() {
            return Err(self.error_at(
                self.key_offset(&["run", "function"]),
                "`run.function` is empty",
            ));
        }
        if config.output.path.trim().is_empty() {
            return Err(self.error_at(
                self.key_offset(&["output", "path"]),
                "`output.path` is empty",
            ));
        }
        if config.cluster.lease < MIN_LEASE {
            return Err(self.error_at(
                self.key_offset(&["cluster", "lease"]),
                format!(
                    "`cluster.lease` must be at least {}s (got {}): workers beat every quarter lease, and a \
                     shorter one makes a live worker on a slow store request look dead, so its shards run twice",
                    MIN_LEASE.as_secs(),
                    humantime::format_duration(config.cluster.lease)
                ),
            ));
        }
        if !(1..=MAX_THREADS).contains(&config.limits.threads) {
            return Err(self.error_at(
                self.key_offset(&["limits", "threads"]),
                format!(
                    "`limits.threads` must be 1 to {MAX_THREADS} (got {}): the threads one shard may use, its own included",
                    config.limits.threads
                ),
            ));
        }
        if let Some(tenant) = &config.run.tenant
            && !valid_name(tenant)
        {
            return Err(self.error_at(
                self.key_offset(&["run", "tenant"]),
                format!("`run.tenant` must be lowercase letters, digits and `-` (a Kubernetes name), got `{tenant}`"),
            ));
        }
        Ok(config)
    }
}

/// Load and parse a config file.
pub fn load(path: &Path) -> Result<(Source, Config), ConfigError> {
    let source = Source::read(path)?;
    let config = source.parse()?;
    Ok((source, config))
}

/// A DNS-label-like name: what Kubernetes accepts for namespaces and labels.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn with_path(path: &serde_path_to_error::Path, message: &str) -> String {
    let path = path.to_string();
    let message = add_did_you_mean(message);
    if path.is_empty() || path == "." {
        message
    } else {
        format!("`{path}`: {message}")
    }
}

/// serde says "unknown field `wokers`, expected one of `backend`, `workers`";
/// add the closest suggestion.
fn add_did_you_mean(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_owned();
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match did_you_mean(field, candidates.iter().copied()) {
        Some(best) => format!("unknown field `{field}`; did you mean `{best}`?"),
        None => message.to_owned(),
    }
}

/// The candidate closest to `word`, if any is close enough to be a typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    // Offsets from parsers may fall inside a multi-byte character.
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn offset_of_line_col(text: &str, line: usize, col: usize) -> usize {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    start + col.saturating_sub(1)
}

fn strip_json_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Best effort for JSON: the first `"key"` after the previous path element.
fn json_key_offset(text: &str, path: &[&str]) -> Option<usize> {
    let mut from = 0;
    for part in path {
        from += text[from..].find(&format!("\"{part}\""))?;
    }
    Some(from)
}

// ---------------------------------------------------------------- arguments

/// Check `[run.args]` against the function's parameters and fill in defaults.
pub fn check_args(
    source: &Source,
    config: &Config,
    function: &FunctionInfo,
) -> Result<Map<String, Value>, ConfigError> {
    let args = &config.run.args;
    let fname = &function.name;
    for (name, value) in args {
        let at = source.key_offset(&["run", "args", name]);
        let Some(param) = function.params.iter().find(|p| &p.name == name) else {
            let mut message = format!("unknown argument `{name}` for `{fname}`");
            match did_you_mean(name, function.params.iter().map(|p| p.name.as_str())) {
                Some(best) => message.push_str(&format!("; did you mean `{best}`?")),
                None if function.params.is_empty() => message.push_str("; it takes no arguments"),
                None => {
                    let known: Vec<String> = function
                        .params
                        .iter()
                        .map(|p| format!("`{}`", p.name))
                        .collect();
                    message.push_str(&format!("; it takes {}", known.join(", ")));
                }
            }
            return Err(source.error_at(at, message));
        };
        if let Err(why) = type_check(&param.ty, value) {
            return Err(source.error_at(
                at,
                format!("argument `{name}` of `{fname}` must be {}: {why}", param.ty),
            ));
        }
    }
    let mut full = Map::new();
    for param in &function.params {
        match args.get(&param.name) {
            Some(v) => {
                full.insert(param.name.clone(), v.clone());
            }
            None => match &param.default {
                Some(default) => {
                    let value = serde_json::from_str(default).unwrap_or(Value::Null);
                    full.insert(param.name.clone(), value);
                }
                None => {
                    return Err(source.error_at(
                        source
                            .key_offset(&["run", "args"])
                            .or(source.key_offset(&["run"])),
                        format!(
                            "missing required argument `{}` for `{fname}` ({}: {})",
                            param.name, param.ty, param.doc
                        ),
                    ));
                }
            },
        }
    }
    Ok(full)
}

/// Check a JSON value against a parameter type such as `int | list<string>`.
pub fn type_check(ty: &str, value: &Value) -> Result<(), String> {
    let alternatives = split_top(ty, '|');
    if alternatives
        .iter()
        .any(|alt| matches_type(alt.trim(), value))
    {
        Ok(())
    } else {
        Err(format!("got {}", describe_value(value)))
    }
}

fn matches_type(ty: &str, value: &Value) -> bool {
    if let Some(inner) = ty.strip_prefix("list<").and_then(|t| t.strip_suffix('>')) {
        return value
            .as_array()
            .is_some_and(|items| items.iter().all(|v| type_check(inner, v).is_ok()));
    }
    if let Some(inner) = ty.strip_prefix("map<").and_then(|t| t.strip_suffix('>')) {
        return value
            .as_object()
            .is_some_and(|m| m.values().all(|v| type_check(inner, v).is_ok()));
    }
    match ty {
        "bool" => value.is_boolean(),
        "int" => value.is_i64() || value.is_u64(),
        "float" => value.is_number(),
        "string" => value.is_string(),
        "list" => value.is_array(),
        "map" => value.is_object(),
        "null" | "none" => value.is_null(),
        // Types we do not know are the plugin's business.
        _ => true,
    }
}

fn split_top(ty: &str, sep: char) -> Vec<&str> {
    let (mut depth, mut start, mut parts) = (0i32, 0, Vec::new());
    for (i, c) in ty.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            c if c == sep && depth == 0 => {
                parts.push(&ty[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&ty[start..]);
    parts
}

fn describe_value(value: &Value) -> String {
    match value {
        Value::Null => "nothing".into(),
        Value::Bool(b) => format!("a bool ({b})"),
        Value::Number(n) if n.is_f64() => format!("a float ({n})"),
        Value::Number(n) => format!("an integer ({n})"),
        Value::String(s) => format!("a string (\"{s}\")"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a table".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("2G"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("512Mi"), Ok(512 << 20));
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert!(parse_bytes("2X").is_err());
    }

    #[test]
    fn types() {
        let v: Value = serde_json::json!(["a", "b"]);
        assert!(type_check("int | list<string>", &v).is_ok());
        assert!(type_check("int", &v).is_err());
        assert!(type_check("float", &serde_json::json!(3)).is_ok());
        assert!(type_check("int", &serde_json::json!(3.5)).is_err());
        assert!(
            type_check(
                "list<string> | map<map>",
                &serde_json::json!({"PAR": {"epochs": 3}})
            )
            .is_ok()
        );
    }

    #[test]
    fn threads_outside_one_to_the_cap_are_refused_where_they_are_written() {
        let text = |t: u32| {
            format!(
                "[run]\nfunction = \"f\"\n[limits]\nthreads = {t}\n[output]\npath = \"o.csv\"\n"
            )
        };
        for t in [0, MAX_THREADS + 1] {
            let e = Source::from_text(Path::new("c.toml"), text(t))
                .parse()
                .unwrap_err();
            assert_eq!(e.location, "c.toml:4:1", "{e:?}");
            assert!(
                e.message
                    .contains(&format!("must be 1 to {MAX_THREADS} (got {t})")),
                "{e:?}"
            );
        }
        let ok = Source::from_text(Path::new("c.toml"), text(2))
            .parse()
            .unwrap();
        assert_eq!(ok.limits.threads, 2);
    }

    #[test]
    fn suggestion() {
        assert_eq!(
            did_you_mean("moels", ["datasets", "models", "metrics"]),
            Some("models")
        );
        assert_eq!(did_you_mean("zzz", ["datasets", "models"]), None);
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const VALID: &str = "[run]\nfunction = \"hello.greet\"\nseed = 1\n[run.args]\nnames = [\"a\"]\n\
                         [cluster]\nworkers = { minimum = 1, maximum = 3 }\n[limits]\nmemory = \"64M\"\n\
                         timeout = \"5s\"\n[output]\npath = \"out.csv\"\n";

    fn check(name: &str, text: String) {
        let source = Source::from_text(Path::new(name), text);
        if let Err(e) = source.parse() {
            // Every rejection names the file, and says something.
            assert!(e.location.starts_with(name), "{e:?}");
            assert!(!e.message.trim().is_empty(), "{e:?}");
        }
    }

    /// Found by `arbitrary_text_never_panics` in CI: serde_json reports a
    /// column that falls inside a multi-byte character.
    #[test]
    fn error_columns_inside_multibyte_characters() {
        check("c.json", "\"'\u{3b26b}\u{23a}=6?\u{fffd}".to_owned());
        check("c.json", "{\"run\": \"\u{1f600}\u{1f600}\n".to_owned());
        check("c.toml", "x = \"\u{1f600}\u{1f600}\n".to_owned());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,400}") {
            check("c.toml", text.clone());
            check("c.json", text);
        }

        #[test]
        fn mutated_valid_configs_never_panic(cuts in proptest::collection::vec((0usize..400, ".{0,8}"), 1..4)) {
            let mut text = VALID.to_owned();
            for (at, insert) in cuts {
                let mut at = at.min(text.len());
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.insert_str(at, &insert);
            }
            check("c.toml", text);
        }

        #[test]
        fn sizes_and_types_never_panic(size in ".{0,20}", ty in ".{0,30}") {
            let _ = parse_bytes(&size);
            let _ = type_check(&ty, &serde_json::json!([1, "a", {"b": null}]));
        }
    }
}
