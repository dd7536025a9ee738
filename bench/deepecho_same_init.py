"""PARModel side by side from the same initial weights: ours (the plugin's code, native
build) and DeepEcho 0.8.1's PyTorch PARModel, trained on BasicMotions from the weights
our `Net::new` draws for a training seed.

  target/venv-bench/bin/python bench/deepecho_same_init.py [--epochs 128] [--seeds 0,1,2]
      [--metric-seeds 5] [--work DIR]

Needs `cargo build --release -p deepecho --example samples` first. Per training seed it
prints both loss curves and their largest gap, each side's share of sampled values equal
to the column mean (a "missing" draw decoded), and both sides' sktime scores
(bench/deepecho_quality.py's metric code). The two samplers draw
from different generators, so the scores compare the trained models statistically; the
loss curves compare the training itself.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deepecho_quality as quality  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "target" / "release" / "examples" / "samples"


def load_init(net, init, model):
    """Copy our initial weights into the reference's PARNet (its layout, transposed)."""
    import numpy as np
    import torch

    hidden = 32
    columns = init["data_columns"]
    data_map = model._data_map
    # Our input row: [value, missing] per numeric column, [START, BODY], the context's
    # categories then its missing slot; the reference's: [μ, σ, missing] per column, START,
    # END, BODY, then the context (an unused slot, then one per category).
    slots = []
    for j, _ in enumerate(columns):
        mu, _sigma, missing = data_map[j]["indices"]
        slots += [mu, missing]
    tokens = data_map["<TOKEN>"]["indices"]
    slots += [tokens["<START>"], tokens["<BODY>"]]
    data_dims = model._data_dims
    for k, names in enumerate(init["context_categories"]):
        indices = model._ctx_map[k]["indices"]
        slots += [data_dims + indices[name] for name in names]
        slots.append(data_dims + min(indices.values()) - 1)  # the unused slot
    assert len(slots) == init["n_in"], (len(slots), init["n_in"])
    down_w = np.zeros((hidden, data_dims + model._ctx_dims), dtype=np.float32)
    ours = np.array(init["down_w"], dtype=np.float32).reshape(init["n_in"], hidden)
    for i, slot in enumerate(slots):
        down_w[:, slot] = ours[i]
    # Our outputs are the reference's, slot for slot ([μ, σ, missing] per column, tokens).
    assert init["n_out"] == data_dims
    with torch.no_grad():
        net.down.weight.copy_(torch.from_numpy(down_w))
        net.down.bias.copy_(torch.tensor(init["down_b"]))
        net.rnn.weight_ih_l0.copy_(torch.tensor(init["gru_wi"]).reshape(hidden, 3 * hidden).T)
        net.rnn.weight_hh_l0.copy_(torch.tensor(init["gru_wh"]).reshape(hidden, 3 * hidden).T)
        net.rnn.bias_ih_l0.copy_(torch.tensor(init["gru_bi"]))
        net.rnn.bias_hh_l0.copy_(torch.tensor(init["gru_bh"]))
        net.up.weight.copy_(torch.tensor(init["up_w"]).reshape(hidden, data_dims).T)
        net.up.bias.copy_(torch.tensor(init["up_b"]))


def reference_from(init, table, epochs, seed, out):
    import torch
    import deepecho.models.par as par

    torch.manual_seed(seed)
    model = par.PARModel(epochs=epochs, cuda=False, verbose=False)
    real_init = par.PARNet.__init__

    def init_from_ours(net, *a, **kw):
        real_init(net, *a, **kw)
        load_init(net, init, model)

    par.PARNet.__init__ = init_from_ours
    try:
        return quality.fit_and_sample(model, table, out)["losses"]
    finally:
        par.PARNet.__init__ = real_init


def mean_share(real, path):
    """Share of sampled dim_* values equal to the real column's mean (a "missing" draw)."""
    import numpy as np
    import pandas as pd

    synth = pd.read_csv(path)
    cols = [c for c in real.columns if c.startswith("dim_")]
    hits = sum(
        np.isclose(synth[c], real[c].mean(), rtol=0, atol=1e-5 * real[c].std()).sum() for c in cols
    )
    return hits / (len(synth) * len(cols))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=128)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--metric-seeds", type=int, default=5)
    p.add_argument("--work", default=str(ROOT / "target" / "deepecho-same-init"))
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    table = quality.load_table(quality.DATA, "BasicMotions")
    real, entity, context, _ = table
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        init_path, ours_csv, ref_csv = (work / f"{n}-{seed}.{e}" for n, e in
                                        (("init", "json"), ("ours", "csv"), ("ref", "csv")))
        run = subprocess.run(
            [EXAMPLE, "PARModel", "BasicMotions", str(args.epochs), str(seed), ours_csv],
            env={"PAR_INIT_OUT": str(init_path), "ENGINE_DATA_DIR": str(quality.DATA)},
            capture_output=True, text=True, check=True, cwd=ROOT,
        )
        ours_losses = json.loads(run.stdout.strip().splitlines()[-1])["losses"]
        ref_losses = reference_from(json.loads(init_path.read_text()), table, args.epochs, seed, ref_csv)
        gap = max(abs(a - b) for a, b in zip(ours_losses, ref_losses))
        marks = [e for e in (0, 1, 2, 4, 8, 16, 32, 64, 127, 255, 511, 1023) if e < args.epochs]
        print(f"training seed {seed}: loss by epoch (ours / reference), largest gap {gap:.2e}")
        print("  " + "  ".join(f"{e}: {ours_losses[e]:.4f}/{ref_losses[e]:.4f}" for e in marks))
        scores = {}
        for side, path in (("ours", ours_csv), ("ref", ref_csv)):
            s = quality.score_all(real, path, entity, context, args.metric_seeds)
            scores[side] = {m: statistics.median(x[m] for x in s) for m in quality.METRICS}
            scores[side]["mean_share"] = mean_share(real, path)
        rows.append((seed, gap, scores))
        for side in ("ours", "ref"):
            print(f"  {side:<4} " + ", ".join(f"{k} {v:.3f}" for k, v in scores[side].items()))
        sys.stdout.flush()
    print("\n| training seed | largest loss gap | " + " | ".join(
        f"{m} ours | {m} ref" for m in quality.METRICS + ["mean_share"]) + " |")
    print("|---|---|" + "---|---|" * (len(quality.METRICS) + 1))
    for seed, gap, s in rows:
        cells = " | ".join(f"{s['ours'][m]:.3f} | {s['ref'][m]:.3f}" for m in quality.METRICS + ["mean_share"])
        print(f"| {seed} | {gap:.1e} | {cells} |")


if __name__ == "__main__":
    main()
