"""Readers and splits in tagllm_core.data: whole-file errors are clear, rows are left to domains."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from tagllm_core.data import (
    random_split,
    read_corpus,
    read_fasta,
    read_smiles_file,
    read_table,
    require_columns,
    scaffold_split,
    stratified_split,
)
from tagllm_core.exceptions import InputError


def test_non_utf8_csv_is_refused_with_a_fix(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("smiles,name\nCCO,\xe9thanol\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8.*CSV UTF-8"):
        read_table(path)


def test_csv_tsv_gzip_and_bom(tmp_path):
    (tmp_path / "a.csv").write_text("\ufeffsmiles,y\nCCO,1.5\n,2\n", encoding="utf-8")
    df = read_table(tmp_path / "a.csv")
    assert list(df.columns) == ["smiles", "y"]  # the BOM is not part of the first name
    assert df["smiles"].isna().tolist() == [False, True]
    (tmp_path / "b.tsv").write_text("smiles\ty\nCCO\t1\n")
    assert list(read_table(tmp_path / "b.tsv").columns) == ["smiles", "y"]
    (tmp_path / "c.csv.gz").write_bytes(gzip.compress(b"smiles,y\nCCN,3\n"))
    assert read_table(tmp_path / "c.csv.gz")["smiles"].tolist() == ["CCN"]


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "e.csv").write_text("  \n")
    with pytest.raises(InputError, match="empty"):
        read_table(tmp_path / "e.csv")
    with pytest.raises(InputError, match="not found"):
        read_table(tmp_path / "nope.csv")


def test_missing_columns_name_the_existing_ones(tmp_path):
    (tmp_path / "a.csv").write_text("SMILES,y\nCCO,1\n")
    df = read_table(tmp_path / "a.csv")
    with pytest.raises(InputError) as err:
        require_columns(df, ["smiles"])
    assert "'smiles'" in str(err.value) and "SMILES" in str(err.value) and "--column" in str(err.value)


def test_fasta_and_smiles_readers(tmp_path):
    (tmp_path / "p.fasta").write_text(">sp|P1 first\nMKT\nAYI\n;comment\n>second\nGGG\n")
    assert read_fasta(tmp_path / "p.fasta") == [("sp|P1 first", "MKTAYI"), ("second", "GGG")]
    assert read_corpus(tmp_path / "p.fasta") == ["MKTAYI", "GGG"]
    (tmp_path / "m.smi").write_text("smiles\nCCO ethanol\n\nc1ccccc1\n")
    assert read_smiles_file(tmp_path / "m.smi") == ["CCO", "c1ccccc1"]
    (tmp_path / "t.csv").write_text("seq,x\nAAA,1\nCCC,2\n")
    assert read_corpus(tmp_path / "t.csv", column="seq") == ["AAA", "CCC"]
    with pytest.raises(InputError, match="column"):
        read_corpus(tmp_path / "t.csv")
    (tmp_path / "none.fasta").write_text("\n\n")
    with pytest.raises(InputError, match="no FASTA records"):
        read_fasta(tmp_path / "none.fasta")


def test_random_split_is_a_seeded_partition():
    tr, va = random_split(100, 0.2, seed=3)
    assert len(va) == 20 and len(tr) == 80
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(100))
    tr2, va2 = random_split(100, 0.2, seed=3)
    assert va.tolist() == va2.tolist()
    assert random_split(100, 0.2, seed=4)[1].tolist() != va.tolist()


def test_scaffold_split_keeps_scaffolds_on_one_side():
    from rdkit.Chem.Scaffolds import MurckoScaffold

    rings = ["c1ccccc1", "C1CCCCC1", "c1ccncc1", "c1ccc2ccccc2c1", "C1CCNCC1", "c1ccoc1"]
    smiles = [f"{r}{'C' * k}" for r in rings for k in range(1, 6 + rings.index(r))]
    split = scaffold_split(smiles, 0.2, seed=0)
    tr, va = split.train, split.valid
    assert split.method == "scaffold" and split.warning is None
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(smiles)))
    scaf = [MurckoScaffold.MurckoScaffoldSmiles(smiles=s) for s in smiles]
    assert not {scaf[i] for i in tr} & {scaf[i] for i in va}
    assert 0 < len(va) <= 0.35 * len(smiles)


def test_scaffold_groups_put_each_molecule_under_its_ring_system():
    from tagllm_core.data import scaffold_groups

    smiles = ["c1ccccc1CC", "CCO", "c1ccccc1O", "not a smiles", "C1CCCCC1N", "CCCC"]
    groups = scaffold_groups(smiles)
    assert groups == {"c1ccccc1": [0, 2], "": [1, 5], "not a smiles": [3], "C1CCCCC1": [4]}


def test_scaffold_split_of_acyclic_molecules_falls_back_to_random_with_a_warning():
    # Every acyclic molecule has the empty scaffold: one group, which used to land whole in validation.
    smiles = ["C" * k + tail for k in range(1, 11) for tail in ("", "O", "N", "C(=O)O", "Cl")]
    assert len(smiles) == 50
    split = scaffold_split(smiles, 0.2, seed=0)
    assert (len(split.train), len(split.valid)) == (40, 10)
    assert sorted(np.concatenate([split.train, split.valid]).tolist()) == list(range(50))
    assert split.method == "random"
    assert "scaffold" in split.warning and "random" in split.warning


def test_dominant_scaffold_goes_to_train_not_to_validation():
    from rdkit.Chem.Scaffolds import MurckoScaffold

    # 95 benzenes with acyclic side chains share one scaffold; 5 molecules have their own.
    smiles = [f"c1ccccc1{'C' * k}{tail}" for k in range(1, 20) for tail in ("", "O", "N", "Cl", "C(=O)O")]
    smiles += ["C1CCCCC1", "c1ccncc1", "C1CCNCC1", "c1ccoc1", "c1ccc2ccccc2c1"]
    assert len(smiles) == 100
    split = scaffold_split(smiles, 0.1, seed=0)
    assert len(split.train) > len(split.valid) >= 2
    assert sorted(np.concatenate([split.train, split.valid]).tolist()) == list(range(100))
    if split.method == "scaffold":
        scaf = [MurckoScaffold.MurckoScaffoldSmiles(smiles=s) for s in smiles]
        assert not {scaf[i] for i in split.train} & {scaf[i] for i in split.valid}
        assert split.warning is None
    else:
        assert split.warning


def test_scaffold_split_with_big_groups_first_stays_near_the_fraction():
    # A few big scaffold groups and many singletons: the big ones go to train, singletons fill validation.
    rings = ["c1ccccc1", "C1CCCCC1", "c1ccncc1"]
    smiles = [f"{r}{'C' * k}" for r in rings for k in range(1, 25)]
    singles = ["C1CC1", "C1CCC1", "C1CCCC1", "C1CCCCCC1", "C1CCCCCCC1", "c1ccoc1", "c1ccsc1", "c1cc[nH]c1",
               "C1CCOC1", "C1CCSC1", "C1COCCO1", "c1cnccn1", "c1ncncn1", "C1CCNC1", "c1ccc2ccccc2c1"]
    smiles += singles
    split = scaffold_split(smiles, 0.15, seed=0)
    assert split.method == "scaffold", split.warning
    target = round(0.15 * len(smiles))
    assert abs(len(split.valid) - target) <= 2


def test_stratified_split_keeps_every_class_in_validation():
    labels = np.array([0] * 90 + [1] * 10)
    for seed in range(20):
        tr, va = stratified_split(labels, 0.1, seed)
        assert sorted(np.concatenate([tr, va]).tolist()) == list(range(100))
        assert set(labels[va]) == {0, 1} and set(labels[tr]) == {0, 1}
        assert len(va) == 10
    # a class with one member cannot be on both sides: it stays in train
    labels = np.array([0] * 30 + [1] * 29 + [2])
    tr, va = stratified_split(labels, 0.2, 0)
    assert 59 in tr and set(labels[va]) == {0, 1}


# --- reading limits (issue 11, item 11) -------------------------------------------------------------


def test_gzip_bomb_is_refused_at_the_size_cap(monkeypatch):
    monkeypatch.setenv("TAGLLM_MAX_DECOMPRESSED_MB", "1")
    bomb = gzip.compress(b"smiles,y\n" + b"CCO,1\n" * 1_000_000)  # ~6 MB of text in ~30 kB
    assert len(bomb) < 100_000
    for reader in (read_table, read_smiles_file, read_fasta):
        with pytest.raises(InputError, match="more than 1 MB.*TAGLLM_MAX_DECOMPRESSED_MB"):
            reader(bomb)
    with pytest.raises(InputError, match="TAGLLM_MAX_DECOMPRESSED_MB"):
        read_table(b"smiles,y\n" + b"CCO,1\n" * 200_000)  # plain text is capped alike


def test_row_cap_is_a_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("TAGLLM_MAX_ROWS", "100")
    assert len(read_table(b"smiles,y\n" + b"CCO,1\n" * 100)) == 100
    with pytest.raises(InputError, match="more than 100 rows.*TAGLLM_MAX_ROWS"):
        read_table(b"smiles,y\n" + b"CCO,1\n" * 101)
    with pytest.raises(InputError, match="more than 100"):
        read_smiles_file(b"CCO\n" * 150)
    with pytest.raises(InputError, match="more than 100"):
        read_fasta(b">p\nMKV\n" * 150)


def test_broken_gzip_is_an_input_error():
    with pytest.raises(InputError, match="gzip"):
        read_table(gzip.compress(b"smiles,y\nCCO,1\n" * 100)[:-30])
    with pytest.raises(InputError, match="gzip"):
        read_table(b"\x1f\x8b" + b"not really gzip")


def test_bad_limit_settings_fall_back_to_the_defaults(monkeypatch):
    from tagllm_core.limits import limits

    default = limits()
    monkeypatch.setenv("TAGLLM_MAX_ROWS", "lots")
    monkeypatch.setenv("TAGLLM_MAX_DECOMPRESSED_MB", "-5")
    assert limits() == default
