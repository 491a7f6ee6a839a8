"""Per-epoch checkpoints of function-tag training, and the run fingerprint that keeps one run from
resuming another's."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .exceptions import TrainingError
from .heads import TaskHead

if TYPE_CHECKING:
    from .backbone import Backbone
    from .train_config import FunctionTagConfig
    from .train_prepare import PreparedData

__all__ = ["Checkpoint", "run_identity", "RESUMABLE_SETTINGS"]

# Settings that do not change the course of training up to a checkpoint: a resumed run may change them.
RESUMABLE_SETTINGS = ("description", "epochs", "patience", "cache_budget_gb", "baselines")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def run_identity(backbone: Backbone, cfg: FunctionTagConfig, parts: dict[str, PreparedData]) -> dict[str, str]:
    """SHA-256 fingerprints of what a checkpoint's state depends on: ``data`` (every cleaned row of
    every part of the split, with its label: the file, the split and its seed), ``settings`` (the
    configuration, less ``RESUMABLE_SETTINGS``) and ``backbone`` (its weights' fingerprint)."""
    fp = backbone.fingerprint
    return {
        "data": _digest({k: [p.inputs, p.y.tolist()] for k, p in parts.items()}),
        "settings": _digest({k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_SETTINGS}),
        "backbone": _digest([fp.hidden_size, fp.vocab_size, fp.embedding_sha256]),
    }


class Checkpoint:
    """Per-epoch training state in one safetensors file, the bookkeeping (JSON) in its header (no
    pickle), for resume. One file, replaced atomically: a kill can never pair one epoch's weights with
    another epoch's bookkeeping. ``identity`` (``run_identity``) is stored with it: a folder left by
    another run is refused, never resumed, since a state of the same shapes would load silently and
    train on from someone else's epoch."""

    FILE = "checkpoint.safetensors"

    def __init__(self, folder: Path, identity: dict[str, str]):
        self.folder, self.identity = Path(folder), identity

    @property
    def path(self) -> Path:
        return self.folder / self.FILE

    def exists(self) -> bool:
        return self.path.exists()

    def _meta(self) -> dict[str, Any]:
        from safetensors import safe_open

        with safe_open(str(self.path), "pt") as f:
            return json.loads((f.metadata() or {})["checkpoint"])

    def verify(self) -> None:
        """Raise ``TrainingError`` when the folder holds a checkpoint that this run did not write."""
        if not self.exists():
            return
        start_afresh = "Delete the folder, or give this run another checkpoint folder, to start afresh."
        try:
            found = self._meta().get("identity")
        except Exception:  # safetensors and json raise several types for a damaged file
            raise TrainingError(f"The checkpoint in {self.folder} cannot be read. {start_afresh}") from None
        if not isinstance(found, dict):
            raise TrainingError(f"The checkpoint in {self.folder} has no run fingerprint (an older version wrote "
                                f"it), so it cannot be told apart from another run's; it was not resumed. "
                                f"{start_afresh}")
        differ = [what for what in ("data", "settings", "backbone") if found.get(what) != self.identity[what]]
        if differ:
            raise TrainingError(f"The checkpoint in {self.folder} comes from another run (its "
                                f"{' and '.join(differ)} differ from this run's); it was not resumed. {start_afresh}")

    def save(self, epoch: int, history: list, best: Any, best_epoch: int, bad_epochs: int, best_state: tuple,
             tag_param: torch.Tensor, head: TaskHead, optimizer: Any) -> None:
        from safetensors.torch import save_file

        from .paths import atomic_write

        opt = optimizer.state_dict()
        tensors = {"tag": tag_param.detach().cpu().contiguous(), "best_tag": best_state[0].cpu().contiguous()}
        for k, v in head.state().items():
            tensors[f"head.{k}"] = v.cpu().contiguous()
        for k, v in best_state[1].items():
            tensors[f"best_head.{k}"] = v.cpu().contiguous()
        scalars = {}
        for pid, st in opt["state"].items():
            for name, val in st.items():
                if torch.is_tensor(val) and val.ndim > 0:
                    tensors[f"opt.{pid}.{name}"] = val.cpu().contiguous()
                else:
                    scalars[f"{pid}.{name}"] = float(val)
        meta = {"identity": self.identity, "epoch": epoch, "history": history, "best": best,
                "best_epoch": best_epoch, "bad_epochs": bad_epochs, "opt_scalars": scalars,
                "param_groups": opt["param_groups"]}
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, lambda tmp: save_file(tensors, tmp, metadata={"checkpoint": json.dumps(meta)}))

    def load(self, tag_param: torch.Tensor, head: TaskHead, optimizer: Any) -> tuple:
        """Restore the tag, head and optimizer in place. Returns (epoch, history, best, best_epoch,
        bad_epochs, best_state)."""
        from safetensors.torch import load_file

        meta = self._meta()
        t = load_file(str(self.path))
        with torch.no_grad():
            tag_param.copy_(t["tag"])
        head.load_state({k[5:]: v for k, v in t.items() if k.startswith("head.")})
        state: dict = {}
        for key, val in t.items():
            if key.startswith("opt."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = val
        for key, val in meta["opt_scalars"].items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = torch.tensor(val)
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        best_state = (t["best_tag"], {k[10:]: v for k, v in t.items() if k.startswith("best_head.")})
        return meta["epoch"], meta["history"], meta["best"], meta["best_epoch"], meta["bad_epochs"], best_state

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
