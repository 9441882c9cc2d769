"""The released TF-CoVR files: the CSV schema read and written symmetrically with a strict list parser, and a folder
of per-video `<video>.pth` embeddings scored with this package's protocol (`tfcovr evaluate-embeddings`)."""
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from tfcovr.cli import main
from tfcovr.data.triplets import TFCOVR_EVAL, TFCOVR_TRAIN, parse_id_list, read_tfcovr_csv, write_tfcovr_csv
from tfcovr.eval.released import evaluate_embedding_folder, load_pth_embeddings

HEADER = ",".join(TFCOVR_EVAL) + "\n"
RELEASED_TEST = (HEADER +  # as the published code's pandas writes it: Python list literals, quoted only where needed
                 "0,0LtLS9wROrk_E_000147_000152_A_0003_0005,0LtLS9wROrk_E_000200_000210_A_0001_0002,show with 2 turns,"
                 "\"['0LtLS9wROrk_E_000200_000210_A_0001_0002', 'x1', \"\"it's\"\"]\"\n"
                 "1,01_1,02_7,\"add a twist, then \"\"pike\"\"\",['02_7']\n"
                 "7,02_3,01_2,\"two\nlines\",\"['01_2', '03_9']\"\n")
RELEASED_TRAIN = (",".join(TFCOVR_TRAIN) + "\n"
                  "a,b,(VT) round-off,\"(VT) round-off, flic-flac\",show with 1 turn\n")


@pytest.fixture
def released(tmp_path):
    (tmp_path / "test.csv").write_text(RELEASED_TEST)
    (tmp_path / "train.csv").write_text(RELEASED_TRAIN)
    return tmp_path


def test_released_csv_round_trips(released, tmp_path):
    df = read_tfcovr_csv(released / "test.csv", "test")
    assert list(df.columns) == TFCOVR_EVAL and df.query_id.tolist() == [0, 1, 7] and df.query_id.dtype == np.int64
    assert df.target_videos_ids.tolist() == [["0LtLS9wROrk_E_000200_000210_A_0001_0002", "x1", "it's"], ["02_7"], ["01_2", "03_9"]]
    assert df.modification.tolist() == ["show with 2 turns", 'add a twist, then "pike"', "two\nlines"]
    write_tfcovr_csv(df, tmp_path / "again.csv")                             # lists as the released files write them
    assert (tmp_path / "again.csv").read_text() == RELEASED_TEST
    pd.testing.assert_frame_equal(read_tfcovr_csv(tmp_path / "again.csv", "test"), df)
    write_tfcovr_csv(df, tmp_path / "json.csv", lists="json")                 # the pipeline's spelling reads back the same
    assert '"[""01_2"", ""03_9""]"' in (tmp_path / "json.csv").read_text()
    pd.testing.assert_frame_equal(read_tfcovr_csv(tmp_path / "json.csv", "test"), df)
    tr = read_tfcovr_csv(released / "train.csv", "train")
    assert tr.label2.tolist() == ["(VT) round-off, flic-flac"]
    write_tfcovr_csv(tr, tmp_path / "train.csv")
    assert (tmp_path / "train.csv").read_text() == RELEASED_TRAIN


def test_schema_must_match_the_split(released):
    with pytest.raises(ValueError, match=r"train\.csv:1: header .* is not the test schema"):
        read_tfcovr_csv(released / "train.csv", "test")
    with pytest.raises(ValueError, match="split must be one of"):
        read_tfcovr_csv(released / "test.csv", "dev")
    with pytest.raises(FileNotFoundError, match=r"none\.csv: file not found"):
        read_tfcovr_csv(released / "none.csv")


@pytest.mark.parametrize("field,why", [
    ("\"__import__('os').system('touch PWNED')\"", "expected a list literal, got call syntax"),
    ("\"{'a': 1}\"", "expected a list literal, got dict syntax"),
    ("\"{\"\"a\"\": [\"\"b\"\"]}\"", "expected a list, got a JSON dict"),
    ("\"['a', 'b'\"", "not a list literal"),
    ("\"['a', __import__('os')]\"", "item 1 at character 7 is not a constant"),
    ("\"[b'a']\"", "item 0 at character 2 is not a string or an integer"),
    ("\"{'a', 'b'}\"", "expected a list literal, got set syntax"),
    ("\"('a', 'b')\"", "expected a list literal, got tuple syntax"),
    ("", "empty field"),
])
def test_hostile_list_fields_are_one_error_line(tmp_path, monkeypatch, field, why):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test.csv").write_text(HEADER + "0,a,b,m,['b']\n" + f"1,a,b,m,{field}\n")
    with pytest.raises(ValueError) as e:
        read_tfcovr_csv(tmp_path / "test.csv", "test")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'test.csv'}:3: column 5 (target_videos_ids): {why}"), msg
    assert "\n" not in msg
    assert not (tmp_path / "PWNED").exists()


def test_parse_id_list_accepts_json_and_python_lists():
    assert parse_id_list('["a", "b\\u00e9"]') == ["a", "bé"]
    assert parse_id_list("['a', \"b'c\", 3]") == ["a", "b'c", "3"]
    assert parse_id_list(" [ ] ") == []


# ---- a folder of <video>.pth embeddings --------------------------------------------------------------------------

VECS = {"a": [1.0, 0.0], "b": [0.8, 0.6], "c": [0.6, 0.8], "d": [0.0, 1.0]}


@pytest.fixture
def folder(tmp_path):
    "Four 2-d embeddings on a circle and a test CSV of three queries."
    for v, x in VECS.items(): torch.save(2 * torch.tensor(x), tmp_path / f"{v}.pth")
    write_tfcovr_csv(pd.DataFrame({"query_id": [0, 1, 2], "query_video": ["a", "d", "b"], "target_video": ["c", "c", "c"],
                                   "modification": ["m"] * 3, "target_videos_ids": [["c", "d"], ["c"], ["c"]]}), tmp_path / "test.csv")
    return tmp_path


def test_folder_scored_with_the_protocol(folder):
    r = evaluate_embedding_folder(folder, folder / "test.csv", ks=(1, 2, 5))
    assert (r["queries"], r["gallery"], r["dim"]) == (3, 4, 2)               # c is listed thrice, counted once
    # query a, itself removed: b, c, d -> hits at ranks 2 and 3; queries d and b find c first
    ap5 = [(1 / 2 + 2 / 3) / 2, 1.0, 1.0]
    assert r["per_query"]["AP@5"].tolist() == pytest.approx(ap5)
    assert r["mAP@5"] == pytest.approx(100 * np.mean(ap5))
    assert r["mAP@1"] == pytest.approx(100 * 2 / 3) and r["mAP@2"] == pytest.approx(100 * (0.25 + 2) / 3)
    assert (r["R@1"], r["R@2"]) == (pytest.approx(100 * 2 / 3), 100.0)
    assert r["R_target@1"] == pytest.approx(100 * 2 / 3)
    assert r["per_query"]["n_relevant"].tolist() == [2, 1, 1]


def test_query_without_other_ground_truth_is_an_error(folder):
    write_tfcovr_csv(pd.DataFrame({"query_id": [4], "query_video": ["a"], "target_video": ["a"], "modification": ["m"],
                                   "target_videos_ids": [["a"]]}), folder / "self.csv")
    with pytest.raises(ValueError, match=r"self\.csv: query 4 \(video 'a'\) has no ground truth other than itself"):
        evaluate_embedding_folder(folder, folder / "self.csv")


def test_every_bad_file_is_named_at_once(folder):
    class Exploit:
        def __reduce__(self): return (print, ("ran",))

    (folder / "a.pth").unlink()
    (folder / "b.pth").write_bytes(b"not a pickle")
    (folder / "c.pth").write_bytes(pickle.dumps(Exploit()))
    torch.save(torch.full((2,), float("nan")), folder / "d.pth")
    with pytest.raises(ValueError) as e:
        evaluate_embedding_folder(folder, folder / "test.csv")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{folder}: 4 of 4 embeddings missing or unreadable: a.pth: missing; b.pth: unreadable")
    assert "c.pth: unreadable (UnpicklingError" in msg and "d.pth: holds NaN or infinite values" in msg


def test_load_pth_embeddings_shapes(tmp_path):
    torch.save(torch.ones(1, 768), tmp_path / "x.pth")
    torch.save(torch.ones(768, dtype=torch.float16), tmp_path / "y.pth")
    torch.save(torch.ones(2, 768), tmp_path / "z.pth")
    torch.save(torch.zeros(768), tmp_path / "w.pth")
    torch.save(torch.ones(768, dtype=torch.int64), tmp_path / "v.pth")
    e = load_pth_embeddings(tmp_path, ["x", "y"])
    assert e.ids == ["x", "y"] and e.emb.shape == (2, 768) and e.emb.dtype == np.float32
    with pytest.raises(ValueError, match=r"3 of 3 .*z\.pth: shape \[2, 768\], expected \[D\] or \[1, D\]; w\.pth: all zeros; "
                                         r"v\.pth: dtype torch\.int64"):
        load_pth_embeddings(tmp_path, ["z", "w", "v"])


def test_cli_evaluate_embeddings(folder, capsys):
    assert main(["evaluate-embeddings", str(folder), "--split", str(folder / "test.csv"), "--ks", "1", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"video-only on {folder / 'test.csv'}: 3 queries, a gallery of 4 unique videos, 2-d embeddings"
    assert out[1].split() == ["K", "mAP@K", "R@K", "R_target@K"]
    assert out[2].split() == ["1", "66.67", "66.67", "66.67"] and out[3].split() == ["2", "75.00", "100.00", "100.00"]
    (folder / "c.pth").unlink()
    assert main(["evaluate-embeddings", str(folder), "--split", str(folder / "test.csv")]) == 2
    err = capsys.readouterr().err
    assert err == f"tfcovr evaluate-embeddings: error: {folder}: 1 of 4 embeddings missing or unreadable: c.pth: missing\n"
