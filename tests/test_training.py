"""Training on tiny backbones: stage 1 (domain tags), stages 2-3 (function tags + heads),
resume from checkpoints, cancellation and killed jobs, data errors, and the metrics.

The supervised task is learnable by construction: 200 deterministic SMILES
(alkanes, alcohols, amines, alkylbenzenes, carboxylic acids with 1-40 chain
carbons) labelled with their RDKit heavy-atom count, which is nearly the
SMILES length. A random character-level model's features carry the length
(GPT-2 through its position embeddings, Llama through the composition of the
mean-pooled input and what the tag's last token attends to), so a linear head
on them fits the count far better than the mean does. Measured on the tiny
Llama (hidden 64): valid RMSE ~0.3 heavy atoms with the default ``last+mean``
read-out and ridge warm start (std of the labels ~11), and ~2.8 after five
epochs of gradient training from a zero head without warm start.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from tagllm_core.data import random_split, stratified_split
from tagllm_core.exceptions import InputError, JobCancelled, TrainingError
from tagllm_core.forest import FOREST_KEYS
from tagllm_core.metrics import concordance_index, conformal_halfwidth
from tagllm_core.prediction import Predictor
from tagllm_core.tags import SlotSpec
from tagllm_core.training import (
    DomainTagConfig,
    FunctionTagConfig,
    train_domain_tag,
    train_function_tag,
)

from conftest import REPO, make_domain_tag, make_function_tag, make_tiny_backbone  # noqa: E402

TESTS = Path(__file__).resolve().parent
SUFFIX = ".tag.safetensors"


# --- data ---------------------------------------------------------------------------------------


def family_smiles(max_chain: int = 40) -> list[str]:
    out = []
    for n in range(1, max_chain + 1):
        chain = "C" * n
        out += [chain, chain + "O", chain + "N", "c1ccccc1" + chain, chain + "C(=O)O"]
    return out


def heavy_atoms(smiles: str) -> int:
    from rdkit import Chem

    return Chem.MolFromSmiles(smiles).GetNumHeavyAtoms()


@pytest.fixture(scope="module")
def molecules() -> pd.DataFrame:
    sm = family_smiles()
    assert len(set(sm)) == 200
    return pd.DataFrame({"smiles": sm, "y": [heavy_atoms(s) for s in sm]})


def small_frame(n_chain: int = 8) -> pd.DataFrame:
    sm = family_smiles(n_chain)
    return pd.DataFrame({"smiles": sm, "y": [float(heavy_atoms(s)) for s in sm]})


def smiles_cfg(name: str = "HeavyAtoms", **kw) -> FunctionTagConfig:
    # The pure-tag head unless a test asks for descriptors (tests/test_readout_depth.py covers them).
    base = dict(name=name, slots=[SlotSpec("smiles", "smiles", None)], labels=["y"], split="random", n_tokens=4,
                epochs=1, features="none")
    base.update(kw)
    return FunctionTagConfig(**base)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob("*")) if Path(folder).exists() else []


# --- stage 2: regression ---------------------------------------------------------------------------


def test_bf16_backbone_the_cuda_default_trains_both_stages_like_fp32(library_factory, molecules):
    """GPUs load the backbone in bf16; the tag, head and loss stay fp32. Same data, same seed:
    the bf16 run must learn the target as the fp32 one does and predict what it validated."""
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        bb = make_tiny_backbone("llama", dtype=dtype)
        assert bb.dtype == dtype
        lib = library_factory(bb)
        res = train_function_tag(bb, lib, smiles_cfg(epochs=2, valid_fraction=0.2), molecules, save=False)
        assert res.tag.vectors.dtype == torch.float32
        vt, vp = np.array(res.valid_true), np.array(res.valid_pred)
        assert np.sqrt(np.mean((vt - vp) ** 2)) < 0.5 * vt.std()
        preds = Predictor(bb, res.tag, lib).predict([{"smiles": s} for s in molecules["smiles"]])
        assert all(p.ok for p in preds)
        dom = train_domain_tag(bb, lib, DomainTagConfig("SMILES", "smiles", steps=20, batch_size=8, n_tokens=2),
                               molecules["smiles"].tolist(), save=False)
        assert dom.perplexity["trained"] < dom.perplexity["random_tag"]
        runs[dtype] = (vp, np.array([p.prediction for p in preds]), dom.perplexity["trained"])
    (vp32, pred32, ppl32), (vp16, pred16, ppl16) = runs[torch.float32], runs[torch.bfloat16]
    assert np.corrcoef(vp32, vp16)[0, 1] > 0.99
    assert np.corrcoef(pred32, pred16)[0, 1] > 0.99
    assert ppl16 == pytest.approx(ppl32, rel=0.02)


def test_stage2_regression_learns_heavy_atoms_and_round_trips(llama, library_factory, molecules):
    lib = library_factory(llama)
    cfg = smiles_cfg(epochs=3, valid_fraction=0.2)  # default read-out last+mean, ridge warm start
    res = train_function_tag(llama, lib, cfg, molecules, data_name="heavy.csv")

    vt, vp = np.array(res.valid_true), np.array(res.valid_pred)
    assert len(vt) == 40
    rmse = float(np.sqrt(np.mean((vt - vp) ** 2)))
    assert res.metrics["rmse"] == pytest.approx(rmse)
    assert rmse < 0.5 * vt.std(), (rmse, vt.std())  # far better than predicting the mean
    assert res.metrics["pearson"] > 0.9

    # the validation rows are those of the documented random split
    _, va_idx = random_split(len(molecules), 0.2, 0)
    assert vt.tolist() == molecules["y"].to_numpy(float)[va_idx].tolist()

    card = res.tag.card
    assert card.training["stage"] == 2 and card.training["data"] == "heavy.csv"
    assert card.training["rows_train"] == 160 and card.training["rows_valid"] == 40
    assert [h["epoch"] for h in res.history] == list(range(len(res.history)))
    assert card.label_scaling["std"][0] > 0 and card.readout == "last+mean" and card.task == "regression"
    assert card.interval["level"] == 0.9 and math.isfinite(card.interval["halfwidth"][0])

    # saved, and the library gives back the same tag
    assert res.path is not None and res.path.parent == lib.user_dir and res.path.name == "HeavyAtoms" + SUFFIX
    loaded = lib.get("HeavyAtoms")
    assert torch.equal(loaded.vectors, res.tag.vectors)
    assert loaded.vectors.shape == (4, llama.hidden_size)
    # the pure tag's head blends a forest on its read-out by default (tests/test_forest.py)
    assert set(loaded.head_state) == {"weight", "bias", "x_mean", "x_std", "blend", *FOREST_KEYS}
    for k, v in res.tag.head_state.items():
        assert torch.equal(loaded.head_state[k], v)
    assert loaded.card.template == card.template and loaded.card.label_scaling == card.label_scaling
    assert loaded.card.metrics["valid"]["rmse"] == pytest.approx(res.metrics["rmse"])

    # prediction (full forward pass) reproduces the training's validation predictions (cached pass)
    rows = [{"smiles": s} for s in molecules["smiles"].iloc[va_idx]]
    preds = Predictor(llama, loaded, lib).predict(rows, batch_size=7)
    assert all(p.ok for p in preds)
    np.testing.assert_allclose([p.prediction for p in preds], vp, rtol=1e-4, atol=1e-4)
    half = card.interval["halfwidth"][0]
    assert preds[0].upper - preds[0].lower == pytest.approx(2 * half)


def test_training_loop_itself_learns_without_warm_start(llama, molecules):
    """No ridge warm start and the ``last`` read-out: only the gradient steps on the tag and a
    head that starts at zero can bring the error down (epoch 0 predicts the training mean)."""
    cfg = smiles_cfg(epochs=5, valid_fraction=0.2, readout="last", ridge_warm_start=False, head_lr=1e-2,
                     patience=10)
    res = train_function_tag(llama, None, cfg, molecules, save=False)
    std = float(np.std(res.valid_true))
    rmses = [h["valid_rmse"] for h in res.history]
    assert len(rmses) == 6
    assert rmses[0] > 0.9 * std
    # the best epoch is kept; history scores the validation rows that chose it (a half of the 40: the
    # other half calibrates the interval), the card's metrics every validation row
    assert rmses[res.tag.card.training["best_epoch"]] == min(rmses)
    assert res.metrics["rmse"] < 0.5 * std, rmses
    losses = [h["train_loss"] for h in res.history[1:]]
    assert losses[-1] < 0.5 * losses[0]
    assert res.path is None


# --- stage 2: classification ---------------------------------------------------------------------


def test_stage2_classification(llama, library_factory, molecules):
    lib = library_factory(llama)
    median = molecules["y"].median()
    df = pd.DataFrame({"smiles": molecules["smiles"],
                       "size": np.where(molecules["y"] > median, "large", "small")})
    cfg = FunctionTagConfig(name="Large", slots=[SlotSpec("smiles", "smiles", None)], labels=["size"],
                            task="classification", epochs=2, split="random", valid_fraction=0.2, n_tokens=4)
    res = train_function_tag(llama, lib, cfg, df)

    assert res.metrics["auroc"] > 0.9, res.metrics
    assert {"auroc", "auprc", "accuracy"} <= set(res.metrics)
    card = lib.get("Large").card
    assert card.classes == ["large", "small"] and card.task == "classification"
    assert card.label_scaling is None and card.interval is None
    assert "valid_auroc" in res.history[-1]

    _, va_idx = stratified_split(df["size"].to_numpy(), 0.2, 0)  # random splits of classes are stratified
    truth = df["size"].iloc[va_idx].tolist()
    assert res.valid_true == [card.classes.index(t) for t in truth]
    preds = Predictor(llama, lib.get("Large"), lib).predict([{"smiles": s} for s in df["smiles"].iloc[va_idx]])
    assert all(p.prediction in ("large", "small") for p in preds)
    # valid_pred holds the probability of the last class; the predictor gives the same numbers
    np.testing.assert_allclose([p.outputs[-1] for p in preds], res.valid_pred, rtol=1e-4, atol=1e-5)
    # the predicted classes score the accuracy training reported (AUROC, not accuracy, picks the epoch:
    # with the stratified split the chosen epoch ranks perfectly but its threshold is off)
    assert np.mean([p.prediction == t for p, t in zip(preds, truth)]) == pytest.approx(res.metrics["accuracy"])


# --- stage 3: two slots ---------------------------------------------------------------------------


def test_stage3_two_slots_with_a_domain_tag(llama, library_factory):
    lib = library_factory(llama)
    lib.save(make_domain_tag(llama, name="Prot", input_kind="protein"))
    dom = lib.get("Prot")
    rng = np.random.default_rng(0)
    motifs = ["MKTAY", "GSH", "WWVKRQ", "PEPTIDE"]
    prots = ["".join(motifs[j] for j in rng.integers(0, 4, rng.integers(1, 4))) for _ in range(40)]
    sm = family_smiles(8)
    df = pd.DataFrame({"protein": prots, "drug": sm, "affinity": [len(p) + heavy_atoms(s) for p, s in zip(prots, sm)]})
    cfg = FunctionTagConfig(
        name="Affinity", labels=["affinity"], columns={"sequence": "protein", "smiles": "drug"},
        slots=[SlotSpec("sequence", "protein", "Prot"), SlotSpec("smiles", "smiles", None)],
        template="Protein {sequence:<Prot>} and drug {smiles} bind with <Placeholder>",
        epochs=1, split="random", valid_fraction=0.25, n_tokens=4)  # 10 validation rows: a finite interval
    res = train_function_tag(llama, lib, cfg, df)

    tag = lib.get("Affinity")
    assert tag.card.training["stage"] == 3
    assert tag.card.template == "Protein {sequence:<Prot>} and drug {smiles} bind with <Affinity>"
    assert [(s.name, s.kind, s.domain_tag) for s in tag.card.slots] == [
        ("sequence", "protein", "Prot"), ("smiles", "smiles", None)]
    # the frozen domain tag is stored unchanged in the function tag
    assert set(tag.domain_vectors) == {"Prot"}
    assert torch.equal(tag.domain_vectors["Prot"], dom.vectors)
    assert torch.equal(tag.vectors, res.tag.vectors)

    rows = [{"sequence": p, "smiles": s} for p, s in zip(prots[:5], sm[:5])] + [{"sequence": "MKTAY"}]
    preds = Predictor(llama, tag, lib).predict(rows)
    assert [p.ok for p in preds] == [True] * 5 + [False]
    assert all(math.isfinite(p.prediction) for p in preds[:5])
    # self-contained: the function tag still predicts after its domain tag left the library
    lib.delete("Prot")
    again = Predictor(llama, lib.get("Affinity")).predict(rows[:5])
    assert [p.prediction for p in again] == pytest.approx([p.prediction for p in preds[:5]], abs=1e-6)


# --- stage 1 --------------------------------------------------------------------------------------


def test_stage1_domain_tag_lowers_held_out_perplexity(llama, library_factory):
    lib = library_factory(llama)
    rng = np.random.default_rng(0)
    motifs = ["MKTAYIAK", "GSHMLEDP", "WWVKRQ", "PEPTIDE"]
    corpus = ["".join(motifs[j] for j in rng.integers(0, len(motifs), rng.integers(2, 5))) for _ in range(100)]
    corpus += ["not a protein!", ""]  # dropped, not fatal
    cfg = DomainTagConfig(name="Motifs", input_kind="protein", n_tokens=4, steps=60, lr=1e-2)
    res = train_domain_tag(llama, lib, cfg, corpus, data_name="motifs.fasta")

    ppl = res.perplexity
    assert ppl["n_valid_sequences"] == 10
    assert ppl["trained"] < 0.95 * ppl["no_tag"], ppl
    assert ppl["trained"] < 0.95 * ppl["random_tag"], ppl
    assert res.dropped == 2
    assert [h["step"] for h in res.history] == [12, 24, 36, 48, 60]
    assert res.history[-1]["valid_perplexity"] == pytest.approx(ppl["trained"])
    tag = lib.get("Motifs")
    assert tag.kind == "domain" and tag.card.input_kind == "protein" and tag.vectors.shape == (4, llama.hidden_size)
    assert tag.card.training["stage"] == 1 and tag.card.training["steps"] == 60
    assert torch.equal(tag.vectors, res.tag.vectors)


# --- resume -----------------------------------------------------------------------------------------


def _resume_cfg():
    # no warm start: the tag keeps improving, so the best epoch is a late one and its state
    # depends on the optimiser state carried across the interruption (a fixed template: with the
    # tiny model, which epoch is best depends on the wording, and this one keeps improving)
    return smiles_cfg(epochs=3, readout="last", ridge_warm_start=False, head_lr=1e-2, patience=10,
                      template="Input: The SMILES of the molecule is {smiles}. Output: The property is <X>")


def test_resume_from_checkpoint_equals_an_uninterrupted_run(llama, tmp_path):
    df = small_frame(12)
    full = train_function_tag(llama, None, _resume_cfg(), df, save=False)
    assert full.tag.card.training["best_epoch"] > 1

    ckpt = tmp_path / "ckpt"
    seen = []

    def interrupt_in_epoch_two(ev):
        seen.append(ev.epoch)
        if ev.epoch is not None and ev.epoch > 1.0 and not ev.metrics:
            raise JobCancelled("interrupted")

    with pytest.raises(JobCancelled):
        train_function_tag(llama, None, _resume_cfg(), df, save=False, checkpoint_dir=ckpt,
                           progress=interrupt_in_epoch_two)
    # one file, so a kill cannot pair one epoch's weights with another epoch's bookkeeping
    assert sorted(os.listdir(ckpt)) == ["checkpoint.safetensors"]

    resumed_events = []
    res = train_function_tag(llama, None, _resume_cfg(), df, save=False, checkpoint_dir=ckpt,
                             progress=resumed_events.append)
    assert [h["epoch"] for h in res.history] == [0, 1, 2, 3]
    assert min(ev.epoch for ev in resumed_events if ev.epoch is not None) > 1.0  # epoch 1 was not rerun
    for a, b in zip(res.history, full.history):
        assert a.keys() == b.keys()
        for k in a:
            if b[k] is None:
                assert a[k] is None
            else:
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (k, a, b)
    assert res.tag.card.training["best_epoch"] == full.tag.card.training["best_epoch"]
    # Not bit-identical only because the resumed run fills its prefix cache in other batches
    # (other padding): differences are ~1e-9.
    torch.testing.assert_close(res.tag.vectors, full.tag.vectors, rtol=1e-5, atol=1e-6)
    for k in full.tag.head_state:
        torch.testing.assert_close(res.tag.head_state[k], full.tag.head_state[k], rtol=1e-5, atol=1e-6)
    assert res.valid_pred == pytest.approx(full.valid_pred, rel=1e-5, abs=1e-6)
    assert os.listdir(ckpt) == []  # a finished run clears its checkpoint


def test_a_checkpoint_from_another_run_is_refused(llama, tmp_path):
    """A leftover checkpoint folder resumes only the run that wrote it: other data, other settings or
    a checkpoint without the run's fingerprint (an older version) are refused, and the folder is kept."""
    import json

    from safetensors import safe_open

    df = small_frame(12)
    ckpt = tmp_path / "ckpt"

    def stop_in_epoch_two(ev):
        if ev.epoch is not None and ev.epoch > 1.0 and not ev.metrics:
            raise JobCancelled("interrupted")

    cfg = smiles_cfg(epochs=2, readout="last", ridge_warm_start=False)
    with pytest.raises(JobCancelled):
        train_function_tag(llama, None, cfg, df, save=False, checkpoint_dir=ckpt, progress=stop_in_epoch_two)
    other_data = df.assign(y=df["y"] * 2.0)  # same rows and shapes, other labels
    with pytest.raises(TrainingError, match=r"another run.*data"):
        train_function_tag(llama, None, cfg, other_data, save=False, checkpoint_dir=ckpt)
    other_cfg = smiles_cfg(epochs=2, readout="last", ridge_warm_start=False, tag_lr=1e-2)
    with pytest.raises(TrainingError, match=r"another run.*settings"):
        train_function_tag(llama, None, other_cfg, df, save=False, checkpoint_dir=ckpt)
    assert sorted(os.listdir(ckpt)) == ["checkpoint.safetensors"]  # refused, not deleted
    from safetensors.torch import load_file, save_file

    path = ckpt / "checkpoint.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["checkpoint"])
    meta.pop("identity", None)  # as written before checkpoints carried the run's fingerprint
    save_file(load_file(str(path)), str(path), metadata={"checkpoint": json.dumps(meta)})
    with pytest.raises(TrainingError, match="fingerprint"):
        train_function_tag(llama, None, cfg, df, save=False, checkpoint_dir=ckpt)
    path.write_bytes(path.read_bytes()[:100])  # damaged (a disk filled up, say)
    with pytest.raises(TrainingError, match="cannot be read"):
        train_function_tag(llama, None, cfg, df, save=False, checkpoint_dir=ckpt)


# --- cancellation and killed jobs leave no tag -------------------------------------------------------


def test_cancelled_function_training_leaves_no_tag(llama, library_factory):
    lib = library_factory(llama)
    lib.save(make_domain_tag(llama, name="Keep"))
    steps = []

    def cancel_at_step_5(ev):
        steps.append(ev.step)
        if ev.step >= 5:
            raise JobCancelled("the job was cancelled")

    with pytest.raises(JobCancelled):
        train_function_tag(llama, lib, smiles_cfg("Doomed", epochs=3, batch_size=8), small_frame(8),
                           progress=cancel_at_step_5)
    assert max(steps) == 5
    assert files_in(lib.user_dir) == ["Keep" + SUFFIX]
    assert not lib.exists("Doomed")


def test_cancelled_domain_training_leaves_no_tag(llama, library_factory):
    lib = library_factory(llama)

    def cancel_at_step_3(ev):
        if ev.step >= 3:
            raise JobCancelled("the job was cancelled")

    with pytest.raises(JobCancelled):
        train_domain_tag(llama, lib, DomainTagConfig(name="Doomed", input_kind="smiles", n_tokens=2, steps=20),
                         family_smiles(4), progress=cancel_at_step_3)
    assert files_in(lib.user_dir) == []


_KILL_CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r}); sys.path.insert(0, {repo!r})
    from conftest import make_tiny_backbone, make_domain_tag
    from test_training import small_frame, smiles_cfg
    from tagllm_core.tags import TagLibrary
    from tagllm_core.training import train_function_tag

    bb = make_tiny_backbone("llama")
    lib = TagLibrary(bb.fingerprint, user_dir={lib!r}, bundled_root={bundled!r})
    lib.save(make_domain_tag(bb, name="Keep"))

    def progress(ev):
        print("EVENT", ev.stage, ev.step, ev.epoch, flush=True)
        time.sleep(0.02)  # slow enough that the parent's SIGKILL lands mid-training

    train_function_tag(bb, lib, smiles_cfg("Killed", epochs=200, patience=1000, batch_size=8), small_frame(8),
                       progress=progress)
    print("DONE", flush=True)
""")


def test_killed_training_process_leaves_no_tag_and_no_temp_files(tmp_path):
    lib_dir = tmp_path / "lib"
    script = tmp_path / "child.py"
    script.write_text(_KILL_CHILD.format(tests=str(TESTS), repo=str(REPO), lib=str(lib_dir),
                                         bundled=str(tmp_path / "bundled")))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=str(tmp_path))
    watchdog = threading.Timer(180, proc.kill)
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            parts = line.split()
            # a training step of the first epoch (after the warm start): kill it there
            if parts[:2] == ["EVENT", "stage2"] and parts[3] != "None" and 0.0 < float(parts[3]) < 1.0:
                proc.send_signal(signal.SIGKILL)
                break
        rc = proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert rc == -signal.SIGKILL, "\n".join(lines[-30:])
    assert "DONE" not in lines
    assert files_in(lib_dir) == ["Keep" + SUFFIX]  # only the tag saved before training; no .tmp files


# --- data errors ---------------------------------------------------------------------------------------


def test_nan_label_names_the_row(llama):
    df = small_frame(8)
    df.loc[2, "y"] = float("nan")
    with pytest.raises(TrainingError, match=r"row.*\b3\b"):
        train_function_tag(llama, None, smiles_cfg(), df, save=False)
    df = small_frame(8)
    df["y"] = df["y"].astype(object)
    df.loc[6, "y"] = "n/a"
    with pytest.raises(TrainingError, match=r"non-numeric.*\b7\b"):
        train_function_tag(llama, None, smiles_cfg(), df, save=False)


def test_constant_labels(llama):
    df = small_frame(8)
    df["y"] = 3.0
    with pytest.raises(TrainingError, match="constant"):
        train_function_tag(llama, None, smiles_cfg(), df, save=False)
    df["y"] = "yes"
    with pytest.raises(TrainingError, match="one class"):
        train_function_tag(llama, None, smiles_cfg(task="classification"), df, save=False)


def test_too_few_rows(llama):
    with pytest.raises(TrainingError, match=r"Only 5 usable rows"):
        train_function_tag(llama, None, smiles_cfg(), small_frame(8).head(5), save=False)
    # bad SMILES are dropped before counting
    df = small_frame(8).head(12).copy()
    df.loc[3:, "smiles"] = "C1CC"
    with pytest.raises(TrainingError, match=r"Only 3 usable rows"):
        train_function_tag(llama, None, smiles_cfg(), df, save=False)


def test_missing_column_lists_the_columns(llama):
    df = small_frame(8).rename(columns={"smiles": "molecule"})
    with pytest.raises(InputError) as err:
        train_function_tag(llama, None, smiles_cfg(), df, save=False)
    msg = str(err.value)
    assert "['smiles']" in msg and "['molecule', 'y']" in msg
    with pytest.raises(InputError, match="validation"):
        train_function_tag(llama, None, smiles_cfg(), small_frame(8), valid_df=df, save=False)


def test_unknown_task_and_empty_config():
    with pytest.raises(TrainingError, match="Unknown task"):
        smiles_cfg(task="ranking")
    with pytest.raises(TrainingError):
        smiles_cfg(labels=[])
    with pytest.raises(TrainingError):
        smiles_cfg(slots=[])
    with pytest.raises(TrainingError, match="Unknown input kind"):
        DomainTagConfig(name="X", input_kind="dna")


def test_existing_name_is_refused_before_training(llama, library_factory):
    lib = library_factory(llama)
    lib.save(make_function_tag(llama, name="Taken"))
    events = []
    with pytest.raises(TrainingError, match="already exists"):
        train_function_tag(llama, lib, smiles_cfg("<Taken>"), small_frame(8), progress=events.append)
    with pytest.raises(TrainingError, match="already exists"):
        train_domain_tag(llama, lib, DomainTagConfig(name="Taken", input_kind="smiles"), family_smiles(4),
                         progress=events.append)
    assert events == []  # refused up front, not after the work
    assert files_in(lib.user_dir) == ["Taken" + SUFFIX]


def test_dropped_rows_are_reported(llama):
    df = small_frame(8)
    df.loc[4, "smiles"] = "C1CC"
    df.loc[9, "smiles"] = ""
    res = train_function_tag(llama, None, smiles_cfg(), df, save=False)
    assert [r for r, _ in res.dropped] == [5, 10]
    assert "C1CC" in res.dropped[0][1] and res.dropped[0][1].startswith("smiles")
    assert res.tag.card.training["rows_dropped"] == 2
    assert res.tag.card.training["rows_train"] + res.tag.card.training["rows_valid"] == len(df) - 2


def test_dropped_rows_keep_file_row_numbers_with_max_rows(llama):
    df = small_frame(8)  # 40 rows
    bad = [4, 9, 14, 19, 24, 29, 34, 39]  # 0-based
    df.loc[bad, "smiles"] = "C1CC"
    cfg = smiles_cfg(max_rows=30)
    sampled = df.sample(30, random_state=cfg.seed)
    expected = sorted(i + 1 for i in sampled.index if i in bad)
    assert expected  # some bad rows are in the sample
    res = train_function_tag(llama, None, cfg, df, save=False)
    assert sorted(r for r, _ in res.dropped) == expected


def test_interval_is_calibrated_on_held_out_validation_rows(llama):
    """With 40 or more validation rows, a seeded half of them sets the interval's half-width and
    nothing else: early stopping and the layer choice see only the other half."""
    from tagllm_core.train_prepare import calibration_split as _calibration_split

    df = small_frame(20)  # 100 rows, 40 for validation
    res = train_function_tag(llama, None, smiles_cfg(epochs=1, valid_fraction=0.4), df, save=False)
    card = res.tag.card
    assert card.training["rows_valid"] == 40
    assert card.training["calibration_rows"] == 20 and card.training["selection_rows"] == 20
    assert all(h["valid_n"] == 20 for h in res.history)  # early stopping saw the selection half only
    select, calib = _calibration_split(40, 0)
    assert sorted([*select, *calib]) == list(range(40)) and len(calib) == 20
    vt, vp = np.array(res.valid_true), np.array(res.valid_pred)  # every validation row, in split order
    assert card.interval["n_calibration"] == 20 and card.interval["calibration"] == "held_out"
    assert card.interval["halfwidth"][0] == pytest.approx(conformal_halfwidth(vt[calib] - vp[calib], 0.9))
    assert card.metrics["held_out"]["n"] == 20
    assert "note" not in card.interval


def test_calibration_split_of_classes_keeps_every_class_in_both_halves():
    from tagllm_core.train_prepare import calibration_split as _calibration_split

    classes = np.array([0] * 37 + [1] * 7)  # 44 rows; the minority's odd member goes to the selection half
    for seed in range(5):
        select, calib = _calibration_split(len(classes), seed, classes)
        assert sorted([*select, *calib]) == list(range(len(classes)))
        assert sorted(classes[calib].tolist()) == [0] * 18 + [1] * 3
        assert sorted(classes[select].tolist()) == [0] * 19 + [1] * 4
    assert _calibration_split(44, 0, np.array([0] * 43 + [1])) is None  # one half would lack class 1
    assert _calibration_split(30, 0, np.array([0, 1] * 15)) is None  # too few rows for two halves
    one_class = _calibration_split(40, 0, np.zeros(40, int))  # a fold with one class is halved all the same
    assert one_class is not None and len(one_class[1]) == 20


def test_classification_is_scored_on_a_held_out_half_that_chose_nothing(llama):
    """A classification tag's epoch and layer are chosen on one stratified half of validation; the other
    half only scores the kept state, so the card has an honest held-out figure, as a regression's has."""
    from tagllm_core.train_prepare import calibration_split as _calibration_split

    df = small_frame(20)  # 100 rows, 40 for validation
    df["size"] = np.where(df["y"] > df["y"].median(), "large", "small")
    cfg = smiles_cfg("Size", labels=["size"], task="classification", epochs=1, valid_fraction=0.4)
    res = train_function_tag(llama, None, cfg, df, save=False)
    card = res.tag.card
    assert card.training["rows_valid"] == 40
    assert card.training["selection_rows"] == 20 and card.training["calibration_rows"] == 20
    assert all(h["valid_n"] == 20 for h in res.history)  # early stopping saw the selection half only
    truth = np.array(res.valid_true)  # every validation row, in split order
    select, calib = _calibration_split(40, 0, truth)
    assert set(truth[select]) == set(truth[calib]) == {0, 1}
    held = card.metrics["held_out"]
    assert held["n"] == 20 and held["auroc"] == pytest.approx(roc_auc_score(truth[calib],
                                                                            np.array(res.valid_pred)[calib]))
    assert card.metrics["valid"]["n"] == 40 and card.interval is None


def test_warm_start_baseline_covers_every_validation_row(llama):
    """The card's warm-start baseline is scored on the same rows as its other baselines (all of
    validation), not on the selection half that history[0] holds: a run that keeps the warm start
    (0 epochs) and one that trains past it report the same warm-start baseline."""
    df = small_frame(20)  # 100 rows, 40 for validation: half of them calibrate
    # a zero head as the warm start (the training mean), which training soon beats
    cfg = dict(valid_fraction=0.4, readout="last", ridge_warm_start=False, head_lr=1e-2, patience=5)
    kept = train_function_tag(llama, None, smiles_cfg(epochs=0, **cfg), df, save=False).tag.card
    trained = train_function_tag(llama, None, smiles_cfg(epochs=3, **cfg), df, save=False)
    card = trained.tag.card
    assert card.training["best_epoch"] != 0  # otherwise the warm start is simply the kept state
    warm = card.metrics["baselines"]["warm_start"]
    assert warm["n"] == 40 and warm["rmse"] == pytest.approx(kept.metrics["valid"]["rmse"], rel=1e-4)
    assert kept.metrics["baselines"]["warm_start"]["rmse"] == pytest.approx(kept.metrics["valid"]["rmse"], rel=1e-6)


def test_small_validation_set_shares_its_rows_and_says_the_interval_is_optimistic(llama):
    res = train_function_tag(llama, None, smiles_cfg(valid_fraction=0.25), small_frame(12), save=False)
    card = res.tag.card
    assert card.training["rows_valid"] < 40
    assert card.training["calibration_rows"] == card.training["rows_valid"]
    assert card.interval["calibration"] == "shared" and "optimistic" in card.interval["note"]


def test_small_validation_set_saves_a_tag_without_interval(llama, library_factory):
    lib = library_factory(llama)
    res = train_function_tag(llama, lib, smiles_cfg("Small"), small_frame(8))  # 40 rows -> 4 validation rows
    assert res.tag.card.training["rows_valid"] == 4
    card = lib.get("Small").card
    assert card.interval is None or math.isfinite(card.interval["halfwidth"][0])
    pred = Predictor(llama, lib.get("Small")).predict([{"smiles": "CCO"}])[0]
    assert pred.ok and (pred.lower is None or math.isfinite(pred.lower))


def test_training_with_a_cache_budget_smaller_than_the_data(llama):
    df = small_frame(12)
    big = train_function_tag(llama, None, _resume_cfg(), df, save=False)
    small = train_function_tag(llama, None, dataclasses.replace(_resume_cfg(), cache_budget_gb=300_000 / 2**30),
                               df, save=False)
    torch.testing.assert_close(small.tag.vectors, big.tag.vectors, rtol=1e-5, atol=1e-6)


# --- metrics ---------------------------------------------------------------------------------------------


def _brute_force_ci(y, p) -> float:
    num = den = 0.0
    for i in range(len(y)):
        for j in range(i + 1, len(y)):
            if y[i] == y[j]:
                continue
            den += 1
            if p[i] == p[j]:
                num += 0.5
            elif (y[i] - y[j]) * (p[i] - p[j]) > 0:
                num += 1
    return num / den


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_concordance_index_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 120
    y = rng.integers(0, 8, n).astype(float)  # many ties in the truth
    p = np.round(y + rng.normal(0, 2, n))  # and in the prediction
    assert concordance_index(y, p) == pytest.approx(_brute_force_ci(y, p), abs=1e-12)
    assert concordance_index(y, y) == 1.0
    assert concordance_index(y, -y) == 0.0
    assert concordance_index(y, np.zeros(n)) == 0.5
    assert math.isnan(concordance_index(np.ones(5), p[:5]))
    # beyond max_pairs it samples pairs: close to the exact value
    assert concordance_index(y, p, max_pairs=3000) == pytest.approx(_brute_force_ci(y, p), abs=0.03)


def test_conformal_halfwidth_covers_fresh_data():
    rng = np.random.default_rng(0)
    for level in (0.8, 0.9, 0.95):
        half = conformal_halfwidth(rng.normal(0, 2, 10_000), level)
        coverage = np.mean(np.abs(rng.normal(0, 2, 10_000)) <= half)
        assert level - 0.02 <= coverage <= level + 0.02, (level, coverage)
    # finite samples: split-conformal covers with probability ceil((n+1)level)/(n+1), here 19/21
    n, trials = 20, 4000
    cal = rng.normal(size=(trials, n))
    new = rng.normal(size=trials)
    hits = [abs(x) <= conformal_halfwidth(c, 0.9) for c, x in zip(cal, new)]
    assert np.mean(hits) == pytest.approx(19 / 21, abs=0.015)
    assert conformal_halfwidth(np.arange(5.0), 0.9) == float("inf")  # too few residuals for 90 %
    assert conformal_halfwidth(np.array([-3.0, 1.0, 2.0, -0.5]), 0.5) == 2.0  # k = ceil(5 * 0.5) = 3
    assert math.isnan(conformal_halfwidth(np.array([]), 0.9))


# --- shared prefixes, augmentation, cropping ------------------------------------------------------------


def _pairs_frame(n_proteins: int = 4, drugs: int = 8) -> pd.DataFrame:
    motifs = ["MKTAY", "GSH", "WWVKRQ", "PEPTIDE"]
    prots = [motifs[p % 4] * (1 + p // 4) + "A" * p for p in range(n_proteins)]
    sm = family_smiles(8)
    rows = [(p, sm[(i * 3 + j) % len(sm)]) for i, p in enumerate(prots) for j in range(drugs)]
    return pd.DataFrame({"sequence": [p for p, _ in rows], "smiles": [s for _, s in rows],
                         "y": [len(p) + heavy_atoms(s) for p, s in rows]})


def _pairs_cfg(**kw) -> FunctionTagConfig:
    base = dict(name="Pairs", labels=["y"],
                slots=[SlotSpec("sequence", "protein", None), SlotSpec("smiles", "smiles", None)],
                epochs=2, split="random", valid_fraction=0.25, n_tokens=3, readout="last+mean", patience=5,
                head_lr=1e-2, tag_lr=1e-2)
    base.update(kw)
    return FunctionTagConfig(**base)


def test_stage3_sharing_a_proteins_prefix_trains_exactly_like_no_sharing(llama, monkeypatch):
    from tagllm_core.prefix_cache import PrefixCache

    df = _pairs_frame()
    shared_lengths = []
    original = PrefixCache.share
    monkeypatch.setattr(PrefixCache, "share", lambda self, *a, **k: shared_lengths.append(original(self, *a, **k))
                        or shared_lengths[-1])
    shared = train_function_tag(llama, None, _pairs_cfg(), df, save=False)
    assert len(shared_lengths[0]) == 4  # one shared prefix per protein
    monkeypatch.setattr(PrefixCache, "share", lambda self, *a, **k: {})
    unshared = train_function_tag(llama, None, _pairs_cfg(), df, save=False)
    torch.testing.assert_close(shared.tag.vectors, unshared.tag.vectors, rtol=1e-4, atol=1e-5)
    assert shared.metrics["rmse"] == pytest.approx(unshared.metrics["rmse"], rel=1e-4)


def test_smiles_augmentation_trains_on_other_spellings(llama, monkeypatch):
    from rdkit import Chem

    from tagllm_core.prefix_cache import PrefixCache

    seen = []
    original = PrefixCache.get
    monkeypatch.setattr(PrefixCache, "get", lambda self, keys, plans: seen.extend(keys) or original(self, keys, plans))
    df = small_frame(12)
    res = train_function_tag(llama, None, smiles_cfg(epochs=2, augment=3), df, save=False)
    augmented = {k for k in seen if k[0] == "a"}
    assert len(augmented) > len(df) // 2  # each epoch draws a random spelling for most molecules
    assert res.tag.card.training["config"]["augment"] == 3
    assert math.isfinite(res.metrics["rmse"])
    # the spellings are the same molecules
    from tagllm_core.train_prepare import augmented_rows as _augmented_rows

    cfg = smiles_cfg(augment=3)
    for row in _augmented_rows({"smiles": "CCCCc1ccccc1"}, cfg, 0):
        assert row["smiles"] != "CCCCc1ccccc1"
        assert Chem.CanonSmiles(row["smiles"]) == Chem.CanonSmiles("CCCCc1ccccc1")
    assert _augmented_rows({"smiles": "CCCCc1ccccc1"}, cfg, 0) == _augmented_rows({"smiles": "CCCCc1ccccc1"}, cfg, 0)
    assert _augmented_rows({"smiles": "C"}, cfg, 0) == []  # methane has one spelling
    assert _augmented_rows({"smiles": "CCCCc1ccccc1"}, smiles_cfg(), 0) == []


def test_max_length_crops_training_inputs_and_predictions_alike(llama, library_factory):
    lib = library_factory(llama)
    df = _pairs_frame(4, 4)
    train_function_tag(llama, lib, _pairs_cfg(name="Cropped", epochs=1, max_length={"protein": 6}), df)
    tag = lib.get("Cropped")
    assert tag.card.training["config"]["max_length"] == {"protein": 6}
    long = "MKTAYGSHWWVKRQ"
    pred = Predictor(llama, tag).predict([{"sequence": long, "smiles": "CCO"}, {"sequence": long[:6], "smiles": "CCO"}])
    assert any("cropped to the first 6" in w for w in pred[0].warnings)
    assert pred[0].prediction == pytest.approx(pred[1].prediction, abs=1e-5)
    # a caller can still ask for another length
    other = Predictor(llama, tag, max_length={"protein": 10}).predict([{"sequence": long, "smiles": "CCO"}])
    assert any("cropped to the first 10" in w for w in other[0].warnings)


# --- hardening: splits, missing classes, non-finite values, over-long SMILES (issue 11) ------------------


def acyclic_frame() -> pd.DataFrame:
    sm = ["C" * n + tail for n in range(1, 11) for tail in ("", "O", "N", "C(=O)O")]
    return pd.DataFrame({"smiles": sm, "y": [float(heavy_atoms(s)) for s in sm]})


def _warning_messages(events) -> list[str]:
    return [e.message for e in events if e.message and e.message.startswith("warning:")]


def test_scaffold_split_fallback_is_warned_in_progress_result_and_card(llama, library_factory):
    lib = library_factory(llama)
    events = []
    # one SMILES slot: "auto" means a scaffold split, impossible here (all 40 molecules are acyclic)
    res = train_function_tag(llama, lib, smiles_cfg("Acyclic", split="auto"), acyclic_frame(), progress=events.append)
    assert res.tag.card.training["rows_valid"] == 4
    assert any("Scaffold split not possible" in w for w in res.warnings)
    card = lib.get("Acyclic").card
    assert card.training["warnings"] == res.warnings
    assert card.training["split_method"] == "random"
    assert any("Scaffold split not possible" in m for m in _warning_messages(events))


def test_a_clean_run_has_an_empty_warnings_list(llama):
    res = train_function_tag(llama, None, smiles_cfg(), small_frame(8), save=False)
    assert res.warnings == [] and res.tag.card.training["warnings"] == []


def _salted(df: pd.DataFrame) -> pd.DataFrame:
    """The same molecules as a vendor would list them: amines as hydrochlorides, acids as sodium salts."""
    out = df.copy()
    out["smiles"] = [s + ".Cl" if s.endswith("N") else s[:-1] + "[O-].[Na+]" if s.endswith("C(=O)O") else s
                     for s in df["smiles"]]
    return out


def test_salts_in_training_data_are_learnt_as_the_parent_molecule(llama, library_factory):
    """Training standardises SMILES as prediction does, so a salted file trains the very tag its parent
    molecules train, and the warnings count what was stripped."""
    clean_df = small_frame(8)
    salted = _salted(clean_df)
    assert (salted["smiles"] != clean_df["smiles"]).sum() == 16  # 8 amines, 8 acids
    lib = library_factory(llama)
    events = []
    res_salt = train_function_tag(llama, lib, smiles_cfg("Salted"), salted, progress=events.append)
    res_clean = train_function_tag(llama, None, smiles_cfg("Salted"), clean_df, save=False)
    assert res_clean.warnings == []
    assert torch.equal(res_salt.tag.vectors, res_clean.tag.vectors)
    assert res_salt.metrics == res_clean.metrics
    assert res_salt.dropped == []
    summary = next(w for w in res_salt.warnings if "standardised" in w)
    assert summary.startswith("16 training SMILES were standardised (salt stripped ×16, neutralised")
    assert "neutralised ×8; rows 3, 5, 8, 10," in summary  # file rows: each chain length's amine and acid
    assert lib.get("Salted").card.training["warnings"] == res_salt.warnings
    assert any("16 training SMILES were standardised" in m for m in _warning_messages(events))


def test_domain_tag_training_reads_salts_as_the_parent_molecule(llama):
    """Stage 1 standardises its corpus as prediction does: a salted corpus trains the very domain tag its
    parent molecules train, and the warnings count what was stripped and flagged, by corpus line."""
    clean_corpus = family_smiles(4)
    salted = _salted(pd.DataFrame({"smiles": clean_corpus}))["smiles"].tolist()
    n_salted = sum(a != b for a, b in zip(salted, clean_corpus))
    assert n_salted > 0
    cfg = DomainTagConfig(name="SaltySmiles", input_kind="smiles", n_tokens=2, steps=4, batch_size=8)
    res_salt = train_domain_tag(llama, None, cfg, salted + ["[Na+].[Cl-]"], save=False)
    res_clean = train_domain_tag(llama, None, cfg, clean_corpus + ["[Na+].[Cl-]"], save=False)
    assert res_salt.dropped == res_clean.dropped == 0
    assert torch.equal(res_salt.tag.vectors, res_clean.tag.vectors)
    summary = next(w for w in res_salt.warnings if "standardised" in w)
    assert summary.startswith(f"{n_salted} corpus SMILES were standardised (salt stripped ×{n_salted}")
    inorganic = f"row {len(salted) + 1})"  # the corpus line of the salt, kept and flagged
    assert any("1 corpus SMILES is inorganic" in w and inorganic in w for w in res_salt.warnings), res_salt.warnings
    assert not any("standardised" in w for w in res_clean.warnings)
    assert res_salt.tag.card.training["warnings"] == res_salt.warnings


def test_a_label_that_is_a_descriptor_is_warned_about(llama):
    """RDKit's descriptors include HeavyAtomCount, the label of small_frame: a descriptor head reads the
    answer off its inputs, and training says so (the bundled <QED> is built as the pure tag for this reason)."""
    from tagllm_core.train_prepare import label_copy_warnings

    df = small_frame(8)
    res = train_function_tag(llama, None, smiles_cfg(features="descriptors", epochs=0), df, save=False)
    (warning,) = [w for w in res.warnings if "is, up to scale, the descriptor" in w]
    assert "'y'" in warning and "rdkit:HeavyAtomCount (r = +1.0000)" in warning and "--features none" in warning
    assert res.tag.card.training["warnings"] == res.warnings
    # a label that is no descriptor, and the pure tag, say nothing
    kinds = {"smiles": "smiles"}
    from tagllm_core.train_prepare import row_descriptors
    extra = row_descriptors(smiles_cfg(features="descriptors"), kinds, [{"smiles": s} for s in df["smiles"]])
    noise = torch.from_numpy(np.random.default_rng(0).normal(size=(len(df), 1)))
    assert label_copy_warnings(kinds, extra, noise, ["y"]) == []
    assert label_copy_warnings(kinds, None, noise, ["y"]) == []
    # an affine copy is still a copy: logS-like rescaling does not hide it
    heavy = torch.tensor(df["y"].to_numpy(dtype=float)).reshape(-1, 1)
    assert len(label_copy_warnings(kinds, extra, -0.5 * heavy + 3, ["y"])) == 1


def test_inorganic_training_rows_are_kept_as_entered_and_warned_as_prediction_flags_them():
    from tagllm_core.train_prepare import prepare_rows

    df = small_frame(8)
    df.loc[5, "smiles"], df.loc[6, "smiles"] = "O", "[Na+].[Cl-]"
    valid = small_frame(4)
    valid.loc[2, "smiles"] = "CCN.Cl"
    rows = prepare_rows(smiles_cfg(), df, valid)
    assert rows.data.dropped == [] and {"smiles": "O"} in rows.train.inputs
    assert {"smiles": "[Cl-].[Na+]"} in rows.train.inputs  # predicted as entered, so trained as entered
    assert {"smiles": "CCN"} in rows.full_valid.inputs
    assert rows.warnings == [
        "2 training SMILES are inorganic or contain a metal (rows 6, 7): kept as entered and trained on; "
        "predictions for such inputs are flagged.",
        "1 validation SMILES was standardised (salt stripped; row 3): the model learns the parent molecule, "
        "as prediction reads it."]


def test_random_split_for_classification_is_stratified():
    from tagllm_core.train_prepare import PreparedData, split_validation as _split

    y = np.array([0] * 90 + [1] * 10)
    data = PreparedData([{"smiles": "C"}] * 100, y, list(range(1, 101)), [])
    for seed in range(10):
        split = _split(data, smiles_cfg(task="classification", split="random", valid_fraction=0.1, seed=seed))
        assert set(y[split.valid]) == {0, 1}, seed
        assert split.method == "stratified"


def test_validation_without_a_class_stops_on_log_loss_and_warns(llama, library_factory, molecules):
    lib = library_factory(llama)
    median = molecules["y"].median()
    df = pd.DataFrame({"smiles": molecules["smiles"], "size": np.where(molecules["y"] > median, "large", "small")})
    train_df, valid_df = df.iloc[::2].reset_index(drop=True), df.iloc[1::2]
    valid_df = valid_df[valid_df["size"] == "small"].reset_index(drop=True)  # no "large" in validation
    cfg = FunctionTagConfig(name="OneClassValid", slots=[SlotSpec("smiles", "smiles", None)], labels=["size"],
                            task="classification", epochs=2, patience=1, n_tokens=4, features="none", layers="final")
    events = []
    res = train_function_tag(llama, lib, cfg, train_df, valid_df, progress=events.append)
    assert any("AUROC" in w and "log-loss" in w for w in res.warnings)
    assert any("AUROC" in m for m in _warning_messages(events))
    card = lib.get("OneClassValid").card
    assert card.training["early_stopping_metric"] == "log_loss"
    assert all("valid_log_loss" in h for h in res.history)
    assert "auroc" not in res.metrics and math.isfinite(res.metrics["log_loss"])


def test_layer_choice_on_a_validation_fold_without_a_class_scores_log_loss(llama, library_factory, molecules):
    """AUROC is undefined on every layer there; the choice falls back like early stopping does,
    instead of scoring every layer infinite and silently keeping layer 1."""
    lib = library_factory(llama)
    median = molecules["y"].median()
    df = pd.DataFrame({"smiles": molecules["smiles"], "size": np.where(molecules["y"] > median, "large", "small")})
    train_df, valid_df = df.iloc[::2].reset_index(drop=True), df.iloc[1::2]
    valid_df = valid_df[valid_df["size"] == "small"].reset_index(drop=True)
    cfg = FunctionTagConfig(name="OneClassLayers", slots=[SlotSpec("smiles", "smiles", None)], labels=["size"],
                            task="classification", epochs=0, n_tokens=4, features="none", layers="auto",
                            layer_tolerance=0)
    res = train_function_tag(llama, lib, cfg, train_df, valid_df)
    choice = res.tag.card.training["layer_choice"]
    scores = choice["valid_log_loss_by_layer"]
    assert sorted(scores) == list(range(1, llama.n_layers + 1))
    assert all(math.isfinite(v) for v in scores.values())
    assert choice["chosen"] == min(scores, key=scores.get)


def test_non_finite_loss_stops_keeps_the_best_state_and_warns(llama, library_factory, monkeypatch):
    from tagllm_core.heads import TaskHead

    lib = library_factory(llama)
    real, calls = TaskHead.loss, []

    def loss(self, out, y):
        calls.append(1)
        value = real(self, out, y)
        return value * float("nan") if len(calls) == 5 else value  # epoch 2, second batch

    monkeypatch.setattr(TaskHead, "loss", loss)
    events = []
    res = train_function_tag(llama, lib, smiles_cfg("NaNLoss", epochs=4, patience=5), small_frame(8),
                             progress=events.append)
    assert len(res.history) == 2  # the warm start and epoch 1; epoch 2 was abandoned
    assert any("non-finite" in w for w in res.warnings)
    assert any("non-finite" in m for m in _warning_messages(events))
    tag = lib.get("NaNLoss")  # saved, and loadable: nothing non-finite was written
    assert torch.isfinite(tag.vectors).all()
    assert all(torch.isfinite(v).all() for v in tag.head_state.values())
    assert any("non-finite" in w for w in tag.card.training["warnings"])
    assert math.isfinite(res.metrics["rmse"])


def _spiking_loss(monkeypatch, spikes) -> list:
    """Multiply the training loss by 1e8 at the calls (1-based) that ``spikes`` accepts; returns the
    list of calls so far (its length is the number of training batches run)."""
    from tagllm_core.heads import TaskHead

    real, calls = TaskHead.loss, []

    def loss(self, out, y):
        calls.append(1)
        value = real(self, out, y)
        return value * 1e8 if spikes(len(calls)) else value

    monkeypatch.setattr(TaskHead, "loss", loss)
    return calls


def test_a_loss_spike_goes_back_to_the_best_state_and_halves_the_learning_rates(llama, monkeypatch):
    from tagllm_core.heads import TaskHead

    calls = _spiking_loss(monkeypatch, lambda call: call == 6)  # epoch 1, batch 6: five batches set the norm
    restores, real_load = [], TaskHead.load_state
    monkeypatch.setattr(TaskHead, "load_state", lambda self, st: (restores.append(len(calls)), real_load(self, st))[1])
    events = []
    res = train_function_tag(llama, None, smiles_cfg(epochs=2, patience=5, batch_size=4), small_frame(8),
                             save=False, progress=events.append)
    jumps = [w for w in res.warnings if "loss jumped" in w]
    assert len(jumps) == 1 and "epoch 1, batch 6" in jumps[0]
    assert "back to the best state on validation (epoch 0" in jumps[0] and "halved" in jumps[0]
    assert "0.00015" in jumps[0]  # the tag's 3e-4, halved
    assert any("loss jumped" in m for m in _warning_messages(events))
    assert 6 in restores  # the head went back to the warm start right after the jump, before batch 7
    assert len(res.history) == 3  # and training went on, for both epochs
    assert all(math.isfinite(h["valid_rmse"]) for h in res.history)


def test_repeated_loss_spikes_stop_training_and_keep_the_best_state(llama, library_factory, monkeypatch):
    from tagllm_core.train_fit import MAX_BACKOFFS

    lib = library_factory(llama)
    _spiking_loss(monkeypatch, lambda call: call > 5)  # every batch after the fifth, all within epoch 1
    res = train_function_tag(llama, lib, smiles_cfg("Spikes", epochs=3, patience=5, batch_size=1), small_frame(8))
    jumps = [w for w in res.warnings if "loss jumped" in w]
    assert len(jumps) == MAX_BACKOFFS + 1 and "training stopped" in jumps[-1]
    assert len(res.history) == 1  # the warm start; epoch 1 was abandoned
    tag = lib.get("Spikes")
    assert tag.card.training["best_epoch"] == 0
    assert torch.isfinite(tag.vectors).all()
    assert any("loss jumped" in w for w in tag.card.training["warnings"])


def test_an_epoch_whose_only_batch_jumped_saves_a_tag_without_a_training_loss(llama, library_factory, monkeypatch):
    lib = library_factory(llama)
    _spiking_loss(monkeypatch, lambda call: call == 2)  # one batch an epoch: epoch 2's only batch jumps
    res = train_function_tag(llama, lib, smiles_cfg("OneBatch", epochs=2, patience=5, batch_size=64), small_frame(8))
    assert [w for w in res.warnings if "epoch 2, batch 1" in w]
    assert len(res.history) == 3 and res.history[2]["train_loss"] is None
    assert math.isfinite(res.history[1]["train_loss"])
    assert lib.get("OneBatch").card.training["history"][2]["train_loss"] is None


def test_loss_watch_judges_against_the_median_of_recent_losses():
    from tagllm_core.train_fit import LossWatch

    watch = LossWatch(factor=20, floor=0.25)
    assert not watch.spiked(1e6)  # no norm yet: the first batch is the reference
    watch.add(0.4)
    assert watch.spiked(8.1) and not watch.spiked(7.9)  # from the second batch on
    for v in (0.5, 0.6, 5.0):  # one hard batch among them moves the median little
        watch.add(v)
    assert watch.typical() == pytest.approx(0.55)
    assert not watch.spiked(10.0) and watch.spiked(12.0)
    tiny = LossWatch()
    tiny.add(1e-6)
    assert not tiny.spiked(1.0)  # the floor: after a near-perfect fit an ordinary batch is no spike
    assert tiny.spiked(6.0)


def test_nan_validation_predictions_are_a_bad_epoch_not_a_crash(llama, monkeypatch):
    import tagllm_core.train_fit as training  # the epoch loop validates through its _predict_std

    real, calls = training._predict_std, []

    def predict(*a, **k):
        calls.append(1)
        out = real(*a, **k)
        return out * np.nan if len(calls) == 2 else out  # the validation after epoch 1

    monkeypatch.setattr(training, "_predict_std", predict)
    res = train_function_tag(llama, None, smiles_cfg(epochs=3, patience=5), small_frame(8), save=False)
    assert len(res.history) == 4
    assert "valid_rmse" not in res.history[1] and res.history[1]["valid_n_nonfinite"] == 4
    assert res.tag.card.training["best_epoch"] != 1
    assert any("epoch 1" in w and "NaN" in w for w in res.warnings)
    assert math.isfinite(res.metrics["rmse"])


def test_stage1_non_finite_loss_stops_and_saves_a_finite_tag_with_a_warning(llama, library_factory, monkeypatch):
    import tagllm_core.domain_training as training

    lib = library_factory(llama)
    real, calls = training._lm_loss, []

    def lm_loss(*a, **k):
        loss, n = real(*a, **k)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 7:
                return loss * float("nan"), n
        return loss, n

    monkeypatch.setattr(training, "_lm_loss", lm_loss)
    cfg = DomainTagConfig(name="NaNDomain", input_kind="smiles", n_tokens=2, steps=20, batch_size=8)
    events = []
    res = train_domain_tag(llama, lib, cfg, family_smiles(8), progress=events.append)
    assert any("non-finite" in w for w in res.warnings)
    assert any("non-finite" in m for m in _warning_messages(events))
    tag = lib.get("NaNDomain")
    assert torch.isfinite(tag.vectors).all()
    assert tag.card.training["steps_run"] == 6
    assert any("non-finite" in w for w in tag.card.training["warnings"])
    assert math.isfinite(res.perplexity["trained"])


def test_library_refuses_to_write_non_finite_tensors(llama, library_factory):
    from tagllm_core.exceptions import TagFormatError

    lib = library_factory(llama)
    tag = make_function_tag(llama, name="Broken")
    tag.head_state["bias"][0] = float("inf")
    with pytest.raises(TagFormatError, match="NaN or infinit"):
        lib.save(tag)
    assert files_in(lib.user_dir) == []


def test_over_long_smiles_is_a_dropped_row_not_a_cropped_molecule(llama):
    df = small_frame(8)
    df.loc[3, "smiles"] = "C" * 250  # longer than the default SMILES limit of 200 characters
    df.loc[7, "smiles"] = "CCCCCCCCCCCCO"
    res = train_function_tag(llama, None, smiles_cfg(max_length={"smiles": 12}), df, save=False)
    rows = dict(res.dropped)
    assert set(rows) >= {4, 8}
    assert "longer than" in rows[4] and "longer than" in rows[8]


def test_stage1_drops_smiles_longer_than_max_tokens_instead_of_cropping(llama, monkeypatch):
    import tagllm_core.domain_training as training

    corpus = family_smiles(8)  # 40 molecules of 1 to 15 characters (one token per character here)
    real, seen = training._lm_batch, []

    def lm_batch(bb, enc, ids_list, tag):
        seen.extend(len(ids) for ids in ids_list)
        return real(bb, enc, ids_list, tag)

    monkeypatch.setattr(training, "_lm_batch", lm_batch)
    cfg = DomainTagConfig(name="ShortSmiles", input_kind="smiles", n_tokens=2, steps=4, batch_size=8, max_tokens=10)
    res = train_domain_tag(llama, None, cfg, corpus, save=False)
    assert res.dropped == sum(len(s) > 10 for s in corpus) > 0
    assert max(seen) <= 10


def test_ridge_head_reads_every_training_row_though_the_layer_choice_samples(llama):
    """``select_rows`` bounds the rows of the every-layer pass (layer choice, probe), not those of
    the ridge head: at a fixed layer a sampled run and an unsampled one fit the same head, and a run
    that chooses its layer says how many rows each part read. Progress counts the extra pass."""
    df = small_frame(20)  # 100 rows: 80 for training
    base = dict(epochs=0, valid_fraction=0.2)
    events = []
    sampled = train_function_tag(llama, None, smiles_cfg(layers=[2], select_rows=30, **base), df, save=False,
                                 progress=events.append).tag
    whole = train_function_tag(llama, None, smiles_cfg(layers=[2], select_rows=10_000, **base), df, save=False).tag
    assert torch.allclose(sampled.head_state["weight"], whole.head_state["weight"], atol=1e-5)
    assert sampled.card.metrics["valid"]["rmse"] == pytest.approx(whole.card.metrics["valid"]["rmse"], rel=1e-5)
    steps = [e.step for e in events if e.stage == "stage2"]
    assert steps == sorted(steps) and steps[-1] == events[-1].total_steps

    auto = train_function_tag(llama, None, smiles_cfg(layers="auto", select_rows=30, **base), df, save=False).tag.card
    assert auto.training["layer_choice"]["rows"] == 30
    assert auto.training["layer_choice"]["ridge_rows"] == auto.training["rows_train"] == 80
    assert auto.metrics["baselines"]["probe"]["rows"] == 30
    full = train_function_tag(llama, None, smiles_cfg(layers="auto", **base), df, save=False).tag.card
    assert "rows" not in full.metrics["baselines"]["probe"]  # the probe read every row too


def test_a_tag_with_several_labels_stops_on_all_of_them_and_predicts_each(llama, library_factory, molecules, tmp_path):
    """Two labels (heavy atoms, and whether the molecule holds oxygen: a second, different scale): the card
    scores each label, early stopping and the layer choice follow both (``mean_scaled_rmse``), and every
    prediction table (one tag, several tags, a stream in chunks) has a column per label, not the first only."""
    from tagllm_core.multi import predict_many
    from tagllm_core.prediction import predict_table
    from tagllm_core.streaming import predict_file

    df = molecules.assign(oxygen=[10.0 * s.count("O") for s in molecules["smiles"]])
    lib = library_factory(llama)
    res = train_function_tag(llama, lib, smiles_cfg(name="Two", labels=["y", "oxygen"], epochs=1, layers="auto",
                                                    valid_fraction=0.2), df)
    card = res.tag.card
    valid = card.metrics["valid"]
    assert set(valid["by_label"]) == {"y", "oxygen"}
    assert valid["rmse"] == pytest.approx(valid["by_label"]["y"]["rmse"])  # the top level: the first label
    std = card.label_scaling["std"]
    assert valid["mean_scaled_rmse"] == pytest.approx(
        (valid["by_label"]["y"]["rmse"] / std[0] + valid["by_label"]["oxygen"]["rmse"] / std[1]) / 2)
    assert card.training["early_stopping_metric"] == "mean_scaled_rmse"
    assert all("valid_mean_scaled_rmse" in h for h in res.history)
    assert "valid_mean_scaled_rmse_by_layer" in card.training["layer_choice"]
    assert not any("AUROC" in w for w in res.warnings)

    _, va_idx = random_split(len(df), 0.2, 0)
    sub = df.iloc[va_idx].reset_index(drop=True)
    out = predict_table(Predictor(llama, lib.get("Two"), lib), sub[["smiles"]])
    for col in ("prediction(y)", "prediction(oxygen)", "lower(oxygen)", "upper(oxygen)"):
        assert col in out.columns, list(out.columns)
    np.testing.assert_allclose(out["prediction"], out["prediction(y)"])
    np.testing.assert_allclose(out["prediction(y)"], res.valid_pred, rtol=1e-4, atol=1e-4)
    oxygen_rmse = float(np.sqrt(np.mean((out["prediction(oxygen)"] - sub["oxygen"]) ** 2)))
    assert oxygen_rmse == pytest.approx(valid["by_label"]["oxygen"]["rmse"], rel=1e-3)
    assert oxygen_rmse < sub["oxygen"].std()  # the second output learned its own label
    half = card.interval["halfwidth"][1]
    np.testing.assert_allclose(out["upper(oxygen)"] - out["lower(oxygen)"], 2 * half, rtol=1e-5)

    many = predict_many(llama, ["Two", "Two"], [{"smiles": s} for s in sub["smiles"][:3]], lib)
    assert any(c.endswith("prediction(oxygen)") for c in many.columns), list(many.columns)

    # a stream whose second chunk fails on every row keeps the per-label columns in every chunk
    src = tmp_path / "in.csv"
    pd.DataFrame({"smiles": ["CCO", "CCN", "not a smiles", "C1CC("]}).to_csv(src, index=False)
    dest = tmp_path / "out.csv"
    predict_file(llama, [lib.get("Two")], lib, src, dest, chunk_rows=2)
    written = pd.read_csv(dest)
    assert len(written) == 4 and "prediction(oxygen)" in written.columns and "upper(oxygen)" in written.columns
    assert written["prediction(oxygen)"].notna().tolist() == [True, True, False, False]
