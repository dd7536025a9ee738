"""DeepEcho 0.8.1's PyTorch PARModel on one dataset, timed like the engine's plugin.

  python deepecho_reference.py DATA_DIR DATASET EPOCHS

Fits on every entity of the dataset (the engine's config sets no max_entities),
then samples one sequence per real entity with that entity's context, on the CPU.
Prints {"fit_time": s, "sample_time": s, "entities": n} as the last line.
"""

import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from deepecho import PARModel


def main():
    data_dir, name, epochs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    torch.manual_seed(0)
    meta = json.loads((data_dir / name / "metadata.json").read_text())
    fields = meta["tables"][name]["fields"]
    data = pd.read_csv(data_dir / name / f"{name}.csv")
    entity = [c for c, f in fields.items() if f["type"] == "id"]
    context = ["ml_class"]
    types = {
        c: "categorical" if f["type"] in ("categorical", "boolean") else "continuous"
        for c, f in fields.items()
        if c not in entity and c not in context
    }
    model = PARModel(epochs=epochs, cuda=False, verbose=False)
    t = time.perf_counter()
    model.fit(data, entity_columns=entity, context_columns=context, data_types=types)
    fit_time = time.perf_counter() - t
    contexts = data[entity + context].drop_duplicates(subset=entity)
    t = time.perf_counter()
    sampled = model.sample(context=contexts[context].reset_index(drop=True))
    sample_time = time.perf_counter() - t
    assert len(sampled) > 0
    print(json.dumps({"fit_time": fit_time, "sample_time": sample_time, "entities": len(contexts)}))


if __name__ == "__main__":
    main()
