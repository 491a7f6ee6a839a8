"""Readers and splits in tagllm_core.data: whole-file errors are clear, rows are left to domains."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from tagllm_core.data import (read_corpus, read_fasta, read_smiles_file, read_table, random_split,
                              require_columns, scaffold_split)
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
    tr, va = scaffold_split(smiles, 0.2, seed=0)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(smiles)))
    scaf = [MurckoScaffold.MurckoScaffoldSmiles(smiles=s) for s in smiles]
    assert not {scaf[i] for i in tr} & {scaf[i] for i in va}
    assert 0 < len(va) <= 0.35 * len(smiles)
