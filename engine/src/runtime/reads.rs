//! A shard's `reads`: the data directories its sandbox mounts, each
//! read-only at `/data/<dir>` (wasi-libc resolves an absolute path through
//! the longest matching preopen, so `/data/<dir>/x` opens as it would with
//! the whole directory mounted, and nothing else under `/data` opens).

use super::{GUEST_DATA_DIR, Shard};
use crate::text::{escape_controls, truncate};
use anyhow::{Result, bail};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Most directories one shard may read (each is a file handle of its
/// sandbox); a shard that reads more reads the whole mount (`reads = []`).
pub const READS_MAX: usize = 256;

/// Why `dir` cannot be a `reads` entry: it must be a relative path of
/// `/`-separated segments of `[A-Za-z0-9._-]`, none of them `.` or `..`.
pub fn check_read(dir: &str) -> Result<(), String> {
    if super::host::is_plain_path(dir) {
        Ok(())
    } else {
        Err(
            "not a data directory path: use `/`-separated segments of letters, digits, `.`, `_` \
             and `-`, none of them `.` or `..`, with no leading `/` (512 bytes in all)"
                .to_owned(),
        )
    }
}

/// Checks the `reads` of planned shards against the run's data: its
/// directory on this machine (`None`: the run has no data) and the paths of
/// its files (its tree: a worker elsewhere gets exactly these). An entry
/// must be well formed and a directory holding data files; a shard of a run
/// without data reads none. Made once for a plan (the data's directories),
/// then given the plan's pages.
pub struct ReadsCheck<'a> {
    function: &'a str,
    data: Option<(&'a Path, BTreeSet<String>)>,
}

impl<'a> ReadsCheck<'a> {
    pub fn new(
        function: &'a str,
        data: Option<&'a Path>,
        files: impl IntoIterator<Item = &'a str>,
    ) -> ReadsCheck<'a> {
        let data = data.map(|dir| {
            let mut dirs = BTreeSet::new();
            for file in files {
                let mut at = 0;
                while let Some(i) = file[at..].find('/') {
                    dirs.insert(file[..at + i].to_owned());
                    at += i + 1;
                }
            }
            (dir, dirs)
        });
        ReadsCheck { function, data }
    }

    /// Check `shards`, those of the plan from `first_index` on (a page).
    pub fn page(&self, first_index: usize, shards: &[Shard]) -> Result<()> {
        let function = self.function;
        for (i, shard) in shards.iter().enumerate() {
            if shard.reads.len() > READS_MAX {
                bail!(
                    "`{function}` planned {} reading {} directories, more than {READS_MAX}; \
                     a shard that reads this many should read the whole data directory (`reads` empty)",
                    describe_shard(first_index + i, shard),
                    shard.reads.len()
                );
            }
            for entry in &shard.reads {
                // Only a refused entry is described.
                let planned = || {
                    let shown = escape_controls(&truncate(entry, 200)).into_owned();
                    format!(
                        "`{function}` planned {} reading `{shown}`",
                        describe_shard(first_index + i, shard)
                    )
                };
                if let Err(why) = check_read(entry) {
                    bail!("{}, which is {why}", planned());
                }
                match &self.data {
                    None => bail!(
                        "{}, but the run has no data (`run.data` is not set)",
                        planned()
                    ),
                    Some((dir, dirs)) if !dirs.contains(entry.as_str()) => {
                        let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
                        let what = if abs.join(entry).is_dir() {
                            "a directory without data files in it"
                        } else {
                            "not a directory"
                        };
                        bail!(
                            "{}, which is {what} of `run.data` ({})",
                            planned(),
                            abs.display()
                        );
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }
}

/// `shard (model=PARModel, dataset=Foo)`, or `shard 3` if it has no key cells.
fn describe_shard(i: usize, shard: &Shard) -> String {
    if shard.key.is_empty() {
        return format!("shard {i}");
    }
    let cells: Vec<String> = shard
        .key
        .iter()
        .map(|(k, v)| {
            let text = format!("{k}={}", v.to_text());
            escape_controls(&truncate(&text, 100)).into_owned()
        })
        .collect();
    format!("shard ({})", cells.join(", "))
}

/// The preopens of a sandbox reading `reads` of `data` (host path, guest
/// path): the whole directory at `/data` when `reads` is empty, else each
/// directory at `/data/<dir>`. Each must be a directory inside `data`
/// (checked again here: a worker never trusts a path read from the store,
/// nor a symbolic link out of the data).
pub(crate) fn mounts(data: &Path, reads: &[String]) -> Result<Vec<(PathBuf, String)>, String> {
    if reads.is_empty() {
        return Ok(vec![(data.to_path_buf(), GUEST_DATA_DIR.to_owned())]);
    }
    if reads.len() > READS_MAX {
        return Err(format!(
            "the shard reads {} data directories, more than {READS_MAX}",
            reads.len()
        ));
    }
    let root = std::fs::canonicalize(data)
        .map_err(|e| format!("cannot open the data directory `{}`: {e}", data.display()))?;
    reads
        .iter()
        .map(|dir| {
            let shown = escape_controls(&truncate(dir, 200)).into_owned();
            check_read(dir).map_err(|why| format!("the shard reads `{shown}`, which is {why}"))?;
            let host = std::fs::canonicalize(root.join(dir))
                .map_err(|e| format!("cannot open the data directory `{shown}`: {e}"))?;
            if !host.starts_with(&root) || !host.is_dir() {
                return Err(format!(
                    "the shard reads `{shown}`, which is not a directory inside the data"
                ));
            }
            Ok((host, format!("{GUEST_DATA_DIR}/{dir}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Cell;

    fn shard(reads: &[&str]) -> Shard {
        Shard {
            key: vec![
                ("model".into(), Cell::Text("PARModel".into())),
                ("dataset".into(), Cell::Text("Foo".into())),
            ],
            payload: "null".into(),
            reads: reads.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    #[test]
    fn entries_are_plain_relative_paths() {
        for ok in ["a", "Basic_Motions", "a/b.c", "x-1/y_2/z.3", "..a", "a.."] {
            assert!(check_read(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/a", "a/", "a//b", ".", "..", "a/../b", "./a", "a b", "é", "a\\b",
        ] {
            assert!(check_read(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_are_checked_against_the_data() {
        let files = ["Bar/Bar.csv", "deep/er/x.csv", "top.csv"];
        let dir = Path::new("/nonexistent/data");
        let check = |reads: &[&str]| {
            ReadsCheck::new("f.g", Some(dir), files)
                .page(0, &[shard(&[]), shard(reads)])
                .map_err(|e| e.to_string())
        };
        assert!(check(&["Bar", "deep", "deep/er"]).is_ok());
        let e = check(&["Foo"]).unwrap_err();
        assert_eq!(
            e,
            "`f.g` planned shard (model=PARModel, dataset=Foo) reading `Foo`, which is not a \
             directory of `run.data` (/nonexistent/data)"
        );
        assert!(check(&["top.csv"]).unwrap_err().contains("not a directory"));
        assert!(
            check(&["../x"])
                .unwrap_err()
                .contains("not a data directory path")
        );
        let e = ReadsCheck::new("f.g", None, [])
            .page(0, &[shard(&["Bar"])])
            .unwrap_err();
        assert!(e.to_string().contains("the run has no data"), "{e}");
        // No shard reads anything: nothing to check, with or without data.
        assert!(
            ReadsCheck::new("f.g", None, [])
                .page(0, &[shard(&[])])
                .is_ok()
        );
    }

    #[test]
    fn mounts_stay_inside_the_data() {
        let top = std::env::temp_dir().join(format!("engine-reads-{}", std::process::id()));
        let (data, outside) = (top.join("data"), top.join("outside"));
        std::fs::create_dir_all(data.join("a/b")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(data.join("f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, data.join("out")).unwrap();
        let m = mounts(&data, &[]).unwrap();
        assert_eq!(m, [(data.clone(), "/data".to_owned())]);
        let m = mounts(&data, &["a".into(), "a/b".into()]).unwrap();
        assert_eq!(m[1].1, "/data/a/b");
        assert!(m[1].0.ends_with("a/b"));
        for bad in ["out", "f", "missing", "..", "a/../.."] {
            assert!(mounts(&data, &[bad.into()]).is_err(), "{bad}");
        }
        std::fs::remove_dir_all(&top).unwrap();
    }
}
