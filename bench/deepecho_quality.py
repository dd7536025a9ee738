"""DeepEcho quality check: our plugin (through the engine) beside DeepEcho 0.8.1 (PyTorch).

Called by bench/deepecho_quality.sh, which builds the engine and the plugin and sets up
the venv. For every (model, epochs, training seed) it

  1. runs the plugin with `save_samples = true` through `engine run` (BasicMotions, all
     entities, `[run.args] seed` = the training seed) and reads fit/sample times from the row
     and the synthetic sequences from `samples/<model>/<dataset>.csv`;
  2. fits DeepEcho's own model (`PARModel` / `BasicGANModel`, CPU, `torch.manual_seed(seed)`)
     on the same table in a child process, samples one sequence per entity with that
     entity's context, timed the same way;
  3. scores BOTH sides' samples with the same code, written here from the reference's
     `deepecho/benchmark/metrics/classification.py` (DeepEcho before the benchmark moved
     to SDGym): sktime's TimeSeriesForestClassifier (100 trees) behind sktime's
     ColumnConcatenator, the reference's splits (`train_test_split`, 75/25), one
     `random_state` per metric seed for both the split and the forest.

     classification_score = accuracy of a forest fit on the synthetic sequences of the
     train entities and scored on the synthetic sequences of the test entities (the
     reference's code does exactly that), divided by the accuracy of one fit on the real
     train entities and scored on the real test entities. Labels: the real context.
     rf_detection_score = 1 - accuracy of a forest telling real (0) from synthetic (1)
     sequences, on a 75/25 split of the real and synthetic sequences pooled.
     classification_real (extra, not in the reference) = the synthetic-trained forest
     scored on the REAL test sequences.

Baselines (RealDataBaseline, UniformBaseline) are scored once (training seed 0) as a
check of the metric code. Prints a Markdown table: per training seed and over all seeds,
medians [min-max] over the metric seeds, ours beside the reference, and fit/sample times.

  python bench/deepecho_quality.py [--models PARModel,BasicGANModel] [--epochs 128,1024]
      [--seeds 0,1,2] [--reference-seeds S,..] [--reuse-reference] [--metric-seeds 5]
      [--dataset BasicMotions] [--no-reference] [--no-ours] [--no-baselines] [--table-only]
      [--engine PATH] [--plugins DIR] [--work DIR]

Our side runs first (minutes), then the reference seed by seed; WORK/table.partial.md is
rewritten after each step, so an interrupted run still leaves its table; the final table
goes to stdout and to WORK/table.md.

Every measurement is appended, one JSON object per line, to WORK/measurements.jsonl.
"""

import argparse
import builtins
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "plugins" / "deepecho" / "data"
METRICS = ["classification", "rf_detection", "classification_real"]


def log(message):
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ data


def load_table(data_dir, name):
    import pandas as pd

    meta = json.loads((data_dir / name / "metadata.json").read_text())
    table = meta["tables"][name]
    fields = table["fields"]
    entity = table.get("entity_columns") or [c for c, f in fields.items() if f["type"] == "id"]
    context = table.get("context_columns") or ["ml_class"]
    data = pd.read_csv(data_dir / name / f"{name}.csv")
    types = {
        c: "categorical" if f["type"] in ("categorical", "boolean") else "continuous"
        for c, f in fields.items()
        if c not in entity and c not in context
    }
    return data, entity, context, types


# ------------------------------------------------------------------ the reference side


def reference_child(args):
    """In a child process: fit DeepEcho's model, sample, write the CSV, print the times."""
    import torch
    from deepecho import BasicGANModel, PARModel

    data, entity, context, types = load_table(Path(args.data), args.dataset)
    torch.manual_seed(args.seed)
    if os.environ.get("QUALITY_TORCH_THREADS"):
        torch.set_num_threads(int(os.environ["QUALITY_TORCH_THREADS"]))
    if args.model == "PARModel":
        model = PARModel(epochs=args.epochs, cuda=False, verbose=False)
    elif args.model == "BasicGANModel":
        model = BasicGANModel(epochs=args.epochs, cuda=False, verbose=False)
    else:
        raise SystemExit(f"no reference for {args.model}")
    print(json.dumps(fit_and_sample(model, (data, entity, context, types), args.out)))


def fit_and_sample(model, table, out):
    """Fit a DeepEcho model on the table, sample one sequence per entity with its context
    into `out`; returns the times and the loss curve (if the model keeps one)."""
    data, entity, context, types = table
    t = time.perf_counter()
    model.fit(data, entity_columns=entity, context_columns=context, data_types=types)
    fit_time = time.perf_counter() - t
    contexts = data[entity + context].drop_duplicates(subset=entity).reset_index(drop=True)
    t = time.perf_counter()
    sampled = model.sample(context=contexts)
    sample_time = time.perf_counter() - t
    sampled.to_csv(out, index=False)
    losses = None
    if hasattr(model, "loss_values") and len(model.loss_values):
        losses = [float(v) for v in model.loss_values["Loss"]]
    return {"fit_time": fit_time, "sample_time": sample_time, "losses": losses}


def run_reference(work, model, dataset, epochs, seed):
    out = work / f"ref-{model}-{epochs}-{seed}.csv"
    cmd = [
        sys.executable, __file__, "reference-child", "--model", model, "--dataset", dataset,
        "--epochs", str(epochs), "--seed", str(seed), "--data", str(DATA), "--out", str(out),
    ]
    # DeepEcho gives categories their input slots in `set()` order, which follows Python's
    # per-process string hashing: without a fixed PYTHONHASHSEED the same torch seed is
    # another initialisation every run.
    env = dict(os.environ, PYTHONHASHSEED=str(seed))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"the reference {model} run failed:\n{p.stderr[-3000:]}")
    info = json.loads(p.stdout.strip().splitlines()[-1])
    return out, info


# ------------------------------------------------------------------ our side (the engine)


def run_ours(args, work, models, dataset, epochs, seed):
    """One `engine run` of the plugin; returns {model: (samples CSV, row)}."""
    folder = work / f"ours-{'-'.join(models)}-{epochs}-{seed}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    epochs_line = f"epochs = {epochs}" if epochs else ""
    (folder / "config.toml").write_text(
        f"""[run]
function = "deepecho.benchmark.run_benchmark"
data = "{DATA}"
seed = 0
[run.args]
datasets = ["{dataset}"]
models = {json.dumps(models)}
metrics = []
{epochs_line}
seed = {seed}
save_samples = true
[cluster]
workers = 1
[limits]
memory = "4G"
timeout = "60m"
threads = 2
[output]
path = "out.csv"
"""
    )
    env = dict(os.environ)
    env["ENGINE_CACHE_DIR"] = str(work / "cache")
    env.pop("RUST_LOG", None)
    cmd = [str(args.engine), "-q", "run", str(folder / "config.toml")]
    if args.plugins:
        cmd += ["--plugins", str(args.plugins)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=folder)
    if p.returncode != 0:
        raise SystemExit(f"engine run failed ({p.returncode}):\n{p.stderr[-3000:]}")
    with open(folder / "out.csv") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    result = {}
    for m in models:
        row = rows[m]
        if row.get("error"):
            raise SystemExit(f"our {m} shard failed: {row['error']}")
        found = sorted(folder.rglob(f"samples/{m}/{dataset}.csv"))
        if len(found) != 1:
            raise SystemExit(f"expected one samples/{m}/{dataset}.csv under {folder}, found {found}")
        result[m] = (found[0], row)
    return result


# ------------------------------------------------------------------ the metrics (independent of the plugin)


def build_x(table, entity, drop):
    """{entity id: [T x d] array}, missing values filled with the entity's column mean."""
    import numpy as np

    out = {}
    for key, group in table.groupby(entity, sort=True):
        key = key[0] if isinstance(key, tuple) and len(key) == 1 else key
        x = group.drop(columns=entity + drop)
        x = x.apply(lambda c: c.fillna(c.mean())).fillna(0.0)
        out[key] = x.to_numpy(dtype=float)
    return out


def to_panel(xs):
    """A list of [T x d] arrays as sktime's numpy3D panel [n, d, T] (all the same T)."""
    import numpy as np

    lengths = {x.shape[0] for x in xs}
    if len(lengths) != 1:
        # The forest works on equal lengths: pad with each series' last value (BasicMotions,
        # the dataset this check is for, has equal lengths; this only keeps other data working).
        t = max(lengths)
        xs = [np.vstack([x, np.repeat(x[-1:], t - x.shape[0], axis=0)]) if x.shape[0] < t else x for x in xs]
    return np.stack([x.T for x in xs])


def forest_score(x_train, y_train, x_test, y_test, seed):
    from sktime.classification.interval_based import TimeSeriesForestClassifier
    from sktime.transformations.colconcat import ColumnConcatenator

    import numpy as np

    # The reference's Pipeline([ColumnConcatenator(), TimeSeriesForestClassifier(100)]),
    # step by step: the d dimensions of each series joined end to end into one.
    concat = ColumnConcatenator()
    x_train = np.asarray(concat.fit_transform(x_train))
    x_test = np.asarray(concat.transform(x_test))
    clf = TimeSeriesForestClassifier(n_estimators=100, random_state=seed)
    clf.fit(x_train, y_train)
    pred = clf.predict(x_test)

    return float(np.mean(np.asarray(pred) == np.asarray(y_test)))


def score(real, synth, entity, context, seed):
    """The reference's classification_score and rf_detection_score, one metric seed."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    target = context[0]
    labels = {}
    for key, group in real.groupby(entity, sort=True):
        key = key[0] if isinstance(key, tuple) and len(key) == 1 else key
        labels[key] = group[target].iloc[0]
    real_x = build_x(real, entity, context)
    synt_x = build_x(synth, entity, context)
    ids = sorted(real_x)
    missing = [i for i in ids if i not in synt_x]
    if missing:
        raise SystemExit(f"the synthetic table lacks entities {missing[:5]}")
    out = {}
    train, test = train_test_split(ids, random_state=seed)
    y_train = np.array([labels[i] for i in train])
    y_test = np.array([labels[i] for i in test])
    real_acc = forest_score(to_panel([real_x[i] for i in train]), y_train,
                            to_panel([real_x[i] for i in test]), y_test, seed)
    synt_acc = forest_score(to_panel([synt_x[i] for i in train]), y_train,
                            to_panel([synt_x[i] for i in test]), y_test, seed)
    synt_on_real = forest_score(to_panel([synt_x[i] for i in train]), y_train,
                                to_panel([real_x[i] for i in test]), y_test, seed)
    out["classification"] = synt_acc / real_acc
    out["classification_real"] = synt_on_real / real_acc
    xs = [real_x[i] for i in ids] + [synt_x[i] for i in sorted(synt_x)]
    ys = np.array([0] * len(ids) + [1] * len(synt_x))
    idx = np.arange(len(xs))
    tr, te = train_test_split(idx, random_state=seed)
    acc = forest_score(to_panel([xs[i] for i in tr]), ys[tr], to_panel([xs[i] for i in te]), ys[te], seed)
    out["rf_detection"] = 1.0 - acc
    return out


def score_all(real, synth_path, entity, context, metric_seeds):
    import pandas as pd

    synth = pd.read_csv(synth_path)
    return [score(real, synth, entity, context, s) for s in range(metric_seeds)]


# ------------------------------------------------------------------ the table


def summary(values):
    if not values:
        return "–"
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    if lo == hi:
        return f"{med:.3f}"
    return f"{med:.3f} [{lo:.2f}–{hi:.2f}]"


def record(work, m):
    with open(work / "measurements.jsonl", "a") as f:
        f.write(json.dumps(m) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="PARModel,BasicGANModel")
    ap.add_argument("--epochs", default="128,1024")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--reference-seeds", default=None,
                    help="training seeds of the reference side (default: --seeds)")
    ap.add_argument("--reuse-reference", action="store_true",
                    help="take a reference (model, epochs, seed) already in WORK/measurements.jsonl "
                         "instead of fitting it again (the table says which)")
    ap.add_argument("--table-only", action="store_true",
                    help="print the table from WORK/measurements.jsonl (the latest entry of each "
                         "model/epochs/seed/side) without running anything")
    ap.add_argument("--metric-seeds", type=int, default=5)
    ap.add_argument("--dataset", default="BasicMotions")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--no-ours", action="store_true", help="run only the reference side")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--engine", default=str(ROOT / "target" / "debug" / "engine"))
    ap.add_argument("--plugins", default=None)
    ap.add_argument("--work", default=str(ROOT / "target" / "deepecho-quality"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    models = [m for m in args.models.split(",") if m]
    epochs_list = [int(e) for e in args.epochs.split(",") if e]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    ref_seeds = seeds if args.reference_seeds is None else [int(s) for s in args.reference_seeds.split(",") if s]
    real, entity, context, _ = load_table(DATA, args.dataset)
    started = time.perf_counter()
    args.load_before = os.getloadavg()
    args.reused = []
    earlier = {}
    if args.reuse_reference and (work / "measurements.jsonl").exists():
        for line in open(work / "measurements.jsonl"):
            m = json.loads(line)
            if m.get("side") == "reference" and len(m.get("scores", [])) >= args.metric_seeds:
                earlier[(m["model"], m["epochs"], m["seed"])] = m
    # rows: (model, epochs, seed) -> {"ours": {...}, "ref": {...}}
    results = {}
    if args.table_only:
        for line in open(work / "measurements.jsonl"):
            m = json.loads(line)
            key = (m["model"], m.get("epochs", "–"), m["seed"])
            if (key[0] not in models and key[1] != "–") or (key[1] != "–" and key[1] not in epochs_list):
                continue
            side = "ref" if m["side"] == "reference" else "ours"
            if side == "ref" and key[2] not in ref_seeds or side == "ours" and key[1] != "–" and key[2] not in seeds:
                continue
            results.setdefault(key, {})[side] = {"scores": m["scores"][:args.metric_seeds],
                                                 "fit": m.get("fit"), "sample": m.get("sample")}
        args.load_before = (float("nan"),)
        final_table(results, models, epochs_list, sorted(set(seeds) | set(ref_seeds)), args, started, work)
        return

    def table():
        with open(work / "table.partial.md", "w") as f:
            print_table(results, models, epochs_list, sorted(set(seeds) | set(ref_seeds)), args,
                        time.perf_counter() - started, f)

    if not args.no_baselines:
        log("baselines (ours, training seed 0)")
        t = time.perf_counter()
        runs = run_ours(args, work, ["RealDataBaseline", "UniformBaseline"], args.dataset, None, 0)
        for m, (path, row) in runs.items():
            scores = score_all(real, path, entity, context, args.metric_seeds)
            results[(m, "–", 0)] = {"ours": {"scores": scores, "fit": float(row["fit_time"]),
                                             "sample": float(row["sample_time"])}}
            record(work, {"model": m, "side": "ours", "seed": 0, "scores": scores})
        log(f"  {time.perf_counter() - t:.0f} s")

    # Ours first (minutes), then the reference (PyTorch PAR at 1024 epochs: ~10 min a seed).
    for model in models if not args.no_ours else []:
        for epochs in epochs_list:
            for seed in seeds:
                key = (model, epochs, seed)
                results.setdefault(key, {})
                load = os.getloadavg()[0]
                t = time.perf_counter()
                (path, row), = run_ours(args, work, [model], args.dataset, epochs, seed).values()
                wall = time.perf_counter() - t
                scores = score_all(real, path, entity, context, args.metric_seeds)
                results[key]["ours"] = {"scores": scores, "fit": float(row["fit_time"]),
                                        "sample": float(row["sample_time"])}
                record(work, {"model": model, "epochs": epochs, "seed": seed, "side": "ours",
                              "fit": float(row["fit_time"]), "sample": float(row["sample_time"]),
                              "engine_wall": wall, "load_before": load, "scores": scores})
                log(f"{model} {epochs} seed {seed}: ours fit {float(row['fit_time']):.1f} s, "
                    f"sample {float(row['sample_time']):.3f} s; "
                    + ", ".join(f"{k} {summary([s[k] for s in scores])}" for k in METRICS))
                table()
    if not args.no_reference:
        for seed in ref_seeds:
            for model in models:
                for epochs in epochs_list:
                    key = (model, epochs, seed)
                    results.setdefault(key, {})
                    if key in earlier:
                        m = earlier[key]
                        results[key]["ref"] = {"scores": m["scores"][:args.metric_seeds], "fit": m["fit"],
                                               "sample": m["sample"]}
                        args.reused.append(f"{model}/{epochs}/{seed}")
                        continue
                    load = os.getloadavg()[0]
                    path, info = run_reference(work, model, args.dataset, epochs, seed)
                    scores = score_all(real, path, entity, context, args.metric_seeds)
                    results[key]["ref"] = {"scores": scores, "fit": info["fit_time"],
                                           "sample": info["sample_time"]}
                    record(work, {"model": model, "epochs": epochs, "seed": seed, "side": "reference",
                                  "fit": info["fit_time"], "sample": info["sample_time"],
                                  "load_before": load, "losses": info.get("losses"), "scores": scores})
                    log(f"{model} {epochs} seed {seed}: reference fit {info['fit_time']:.1f} s, "
                        f"sample {info['sample_time']:.2f} s; "
                        + ", ".join(f"{k} {summary([s[k] for s in scores])}" for k in METRICS))
                    table()

    final_table(results, models, epochs_list, sorted(set(seeds) | set(ref_seeds)), args, started, work)


def final_table(results, models, epochs_list, seeds, args, started, work):
    """The table, to stdout and to WORK/table.md, with the command that made it."""
    elapsed = time.perf_counter() - started
    command = os.environ.get("QUALITY_COMMAND") or " ".join(sys.argv)
    with open(work / "table.md", "w") as f:
        for out in (sys.stdout, f):
            print_table(results, models, epochs_list, seeds, args, elapsed, out)
            print(f"# command: {command}; wall {elapsed:.0f} s", file=out)


def print_table(results, models, epochs_list, seeds, args, elapsed, out):
    def print(*a):
        builtins.print(*a, file=out)

    import sklearn
    import sktime

    try:
        import deepecho
        import torch

        threads = os.environ.get("QUALITY_TORCH_THREADS") or f"{torch.get_num_threads()} (its default)"
        versions = f"deepecho {deepecho.__version__}, torch {torch.__version__} (threads: {threads})"
    except ImportError:
        versions = "no reference"
    print(f"# {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, {args.dataset}, all entities; "
          f"{os.cpu_count()} cores; sktime {sktime.__version__}, scikit-learn {sklearn.__version__}, {versions}")
    if args.table_only:
        run = "rendered with --table-only from measurements.jsonl (each entry has its load average)"
    else:
        run = (f"run took {elapsed / 60:.1f} min; load average before {args.load_before[0]:.2f}, "
               f"after {os.getloadavg()[0]:.2f}")
    print(f"# scores: medians [min–max] over {args.metric_seeds} metric seeds (x the training seeds "
          f"on the 'all' rows); times: medians over the training seeds, ratios: medians of per-seed "
          f"ratios; {run}")
    print("# classification: the reference's metric (a forest fit on the synthetic sequences of the train "
          "entities, scored on the synthetic test ones, / the real-on-real accuracy); classification_real: "
          "the same forest scored on the real test sequences")
    if args.reused:
        print(f"# reference entries reused from earlier runs (--reuse-reference): {', '.join(args.reused)}")
    print()
    print("| model | epochs | training seed | classification ours | classification ref "
          "| rf_detection ours | rf_detection ref | classification_real ours | classification_real ref "
          "| fit s ours / ref (ratio) | sample s ours / ref (ratio) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def cells(entries, side):
        scores = [s for e in entries if side in e for s in e[side]["scores"]]
        return [summary([s[k] for s in scores]) for k in METRICS]

    def times(entries, what):
        # ours: median over its seeds; the ratio: median of per-seed ratios where both ran.
        ours = [e["ours"][what] for e in entries if "ours" in e and e["ours"][what] is not None]
        pairs = [(e["ours"][what], e["ref"][what]) for e in entries if "ours" in e and "ref" in e]
        if not ours:
            return "–"
        o = statistics.median(ours)
        if not pairs:
            return f"{o:.3g} / –"
        r = statistics.median(p[1] for p in pairs)
        ratio = statistics.median(p[1] / p[0] for p in pairs)
        return f"{o:.3g} / {r:.3g} ({ratio:.1f}×)"

    for key in [k for k in results if k[1] == "–"]:
        e = results[key]
        o = cells([e], "ours")
        print(f"| {key[0]} | – | 0 | {o[0]} | – | {o[1]} | – | {o[2]} | – | – | – |")
    for model in models:
        for epochs in epochs_list:
            entries = []
            for seed in seeds:
                e = results.get((model, epochs, seed))
                if e is None:
                    continue
                entries.append(e)
                o, r = cells([e], "ours"), cells([e], "ref")
                print(f"| {model} | {epochs} | {seed} | {o[0]} | {r[0]} | {o[1]} | {r[1]} | {o[2]} | {r[2]} "
                      f"| {times([e], 'fit')} | {times([e], 'sample')} |")
            if len(entries) > 1:
                o, r = cells(entries, "ours"), cells(entries, "ref")
                print(f"| **{model}** | **{epochs}** | **all** | **{o[0]}** | **{r[0]}** | **{o[1]}** | **{r[1]}** "
                      f"| {o[2]} | {r[2]} | {times(entries, 'fit')} | {times(entries, 'sample')} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "reference-child":
        ap = argparse.ArgumentParser()
        ap.add_argument("cmd")
        for a in ["--model", "--dataset", "--data", "--out"]:
            ap.add_argument(a, required=True)
        ap.add_argument("--epochs", type=int, required=True)
        ap.add_argument("--seed", type=int, required=True)
        reference_child(ap.parse_args())
    else:
        main()
