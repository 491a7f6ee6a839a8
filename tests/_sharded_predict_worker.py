"""Predicts the files of IN_FOLDER with ``streaming.predict_file`` on a tiny Llama; run once plainly and
once under ``torchrun --nproc_per_node 2`` by tests/test_sharded_predict.py, which compares the outputs.

Usage: python tests/_sharded_predict_worker.py IN_FOLDER OUT_FOLDER

IN_FOLDER holds ``rows.csv`` (an ``id`` and a ``smiles`` column, some rows invalid, one chunk all invalid),
``mols.smi`` and ``one.csv`` (a single row). Outputs (written by process 0): ``table.csv`` (one tag with an
interval), ``many.csv`` (two tags), ``table.sdf``, ``one.csv``, ``resumed.csv`` (stopped after two chunks as
a kill would, then resumed). Every process writes ``rank{R}.json``: its rank, the world size, its own result
counts, how many batches it ran itself, and the message of the refused resume (an output with more rows
than its input).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
os.environ.setdefault("TAGLLM_NO_MALLOC_TUNING", "1")

import torch  # noqa: E402

from tagllm_core.distributed import leave_together  # noqa: E402
from tagllm_core.exceptions import InputError  # noqa: E402
from tagllm_core.prediction import Predictor  # noqa: E402
from tagllm_core.streaming import predict_file  # noqa: E402

from conftest import make_function_tag, make_tiny_backbone  # noqa: E402

CHUNK, BATCH = 7, 3  # several batches per chunk, not a multiple of two processes


def main(src: Path, out: Path) -> None:
    torch.set_num_threads(1)
    batches_run, run = [0], Predictor._run

    def counted(self, *args, **kw):
        batches_run[0] += 1
        return run(self, *args, **kw)

    Predictor._run = counted  # the model work this process did itself
    bb = make_tiny_backbone("llama")
    one_smiles = (("smiles", "smiles", None),)
    logs = make_function_tag(bb, name="LogS", slots=one_smiles, interval={"level": 0.9, "halfwidth": [1.5]})
    other = make_function_tag(bb, name="Other", slots=one_smiles, seed=3, readout="last+mean")
    kw = dict(chunk_rows=CHUNK, batch_size=BATCH)
    runs = {
        "table.csv": predict_file(bb, [logs], None, src / "rows.csv", out / "table.csv", **kw),
        "many.csv": predict_file(bb, [logs, other], None, src / "rows.csv", out / "many.csv", **kw),
        "table.sdf": predict_file(bb, [logs], None, src / "mols.smi", out / "table.sdf", **kw),
        "one.csv": predict_file(bb, [logs], None, src / "one.csv", out / "one.csv", **kw),
    }
    predict_file(bb, [logs], None, src / "rows.csv", out / "resumed.csv", max_chunks=2, **kw)
    runs["resumed.csv"] = predict_file(bb, [logs], None, src / "rows.csv", out / "resumed.csv", resume=True, **kw)
    try:  # table.csv holds more rows than one.csv: refused on every process, none left waiting
        predict_file(bb, [logs], None, src / "one.csv", out / "table.csv", resume=True, **kw)
        refused = None
    except InputError as err:
        refused = str(err)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    report = {"rank": rank, "world": world, "refused": refused, "batches_run": batches_run[0],
              "results": {name: {k: v for k, v in r.to_dict().items() if k not in ("seconds", "rows_per_s", "output")}
                          for name, r in runs.items()}}
    (out / f"rank{rank}.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    leave_together()  # a rank that exits while the other still writes can abort in gloo's teardown


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
