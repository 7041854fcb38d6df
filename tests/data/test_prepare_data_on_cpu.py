"""``duet-verl prepare-data --from-dir`` on the fixture files: rows, counts, idempotency, every row verifiable by
its own verifier, and bad inputs named by file and row with exit status 2."""

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from duet_verl.cli import main
from duet_verl.data import DATASETS, DataError, prepare_data
from duet_verl.data.prepare import GPQA_SUFFIX, MATH_SUFFIX, SUMMARY_FILE
from duet_verl.verifiers import compute_score

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
EXPECTED_COUNTS = {  # (read, dropped_no_answer, dropped_overlap, written)
    "math_train": (5, 1, 1, 3),
    "math500": (2, 0, 0, 2),
    "aime2024": (2, 0, 0, 2),
    "gsm8k": (2, 0, 0, 2),
    "humaneval": (2, 0, 0, 2),
    "gpqa_diamond": (3, 0, 0, 3),
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    return out, prepare_data(out, None, FIXTURES)


def rows(out: Path, name: str) -> list[dict]:
    return pq.read_table(out / f"{name}.parquet").to_pylist()


def test_every_dataset_is_written_with_its_counts(prepared):
    out, summary = prepared
    counts = {
        name: (s["read"], s["dropped_no_answer"], s["dropped_overlap"], s["written"]) for name, s in summary.items()
    }
    assert counts == EXPECTED_COUNTS
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{n}.parquet" for n in DATASETS] + [SUMMARY_FILE])
    assert json.loads((out / SUMMARY_FILE).read_text()) == summary
    for name in DATASETS:
        table = rows(out, name)
        assert len(table) == summary[name]["written"]
        for row in table:
            assert set(row) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
            assert row["data_source"] == DATASETS[name].data_source
            assert [m["role"] for m in row["prompt"]] == ["user"]
            assert row["reward_model"]["style"] == "rule"
            assert row["extra_info"]["split"] == ("train" if name == "math_train" else "test")


def test_math_train_is_cleaned_and_math_prompts_end_with_the_papers_suffix(prepared):
    out, _ = prepared
    train = rows(out, "math_train")
    assert [r["extra_info"]["index"] for r in train] == [0, 1, 4]  # 2: no \boxed answer, 3: a MATH-500 problem
    assert [r["reward_model"]["ground_truth"] for r in train] == ["14", "\\frac{3}{4}", "\\{1,4\\}"]
    for name in ("math_train", "math500", "aime2024", "gsm8k"):
        for row in rows(out, name):
            assert row["prompt"][0]["content"].endswith(
                "\nPlease reason step by step, and put your final answer within \\boxed{}."
            )
    assert MATH_SUFFIX == "Please reason step by step, and put your final answer within \\boxed{}."
    assert [r["reward_model"]["ground_truth"] for r in rows(out, "gsm8k")] == ["1200", "6"]
    assert [r["reward_model"]["ground_truth"] for r in rows(out, "aime2024")] == ["24", "9"]


def test_gpqa_options_are_shuffled_reproducibly_and_the_letter_points_at_the_right_one(prepared):
    out, _ = prepared
    source = [json.loads(line) for line in (FIXTURES / "gpqa_diamond.jsonl").read_text().splitlines()]
    letters = []
    for row, raw in zip(rows(out, "gpqa_diamond"), source, strict=True):
        text = row["prompt"][0]["content"]
        assert text.endswith(GPQA_SUFFIX)
        options = dict(line.split(") ", 1) for line in text.split("\n\n")[1].splitlines())
        assert sorted(options.values()) == sorted(
            raw[k].strip() for k in ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
        )
        letter = row["reward_model"]["ground_truth"]
        assert options[letter] == raw["Correct Answer"].strip()
        letters.append(letter)
    assert letters != ["A", "A", "A"]  # shuffled: the correct answer is not always first


def test_each_written_row_scores_one_for_its_answer_and_zero_for_a_wrong_one(prepared):
    out, _ = prepared
    for name in DATASETS:
        for row in rows(out, name):
            truth, info = row["reward_model"]["ground_truth"], row["extra_info"]
            if name == "humaneval":
                right, wrong = truth, "    return None\n"  # the reference body, and a wrong one
            else:
                wrong_letter = "B" if truth != "B" else "C"
                right = f"so \\boxed{{{truth}}}"
                wrong = f"so \\boxed{{{wrong_letter if name == 'gpqa_diamond' else '123456'}}}"
            assert compute_score(row["data_source"], right, truth, info) == 1.0, (name, row)
            assert compute_score(row["data_source"], wrong, truth, info) == 0.0, (name, row)


def test_rerunning_keeps_identical_files_and_says_so(tmp_path, capsys):
    assert main(["prepare-data", "--out", str(tmp_path), "--from-dir", str(FIXTURES), "--datasets", "gsm8k"]) == 0
    first = (tmp_path / "gsm8k.parquet").read_bytes()
    mtime = (tmp_path / "gsm8k.parquet").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["prepare-data", "--out", str(tmp_path), "--from-dir", str(FIXTURES), "--datasets", "gsm8k"]) == 0
    captured = capsys.readouterr()
    assert "gsm8k: unchanged, kept" in captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["gsm8k"]["status"] == "unchanged" and summary["gsm8k"]["written"] == 2
    assert (tmp_path / "gsm8k.parquet").read_bytes() == first
    assert (tmp_path / "gsm8k.parquet").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gsm8k.parquet", SUMMARY_FILE]


def test_a_parquet_source_gives_the_same_rows_as_jsonl(tmp_path, prepared):
    source = tmp_path / "src"
    source.mkdir()
    raw = [json.loads(line) for line in (FIXTURES / "aime2024.jsonl").read_text().splitlines()]
    for row in raw:
        row["answer"] = str(row["answer"])  # one type per parquet column
    pq.write_table(pa.Table.from_pylist(raw), source / "aime2024.parquet")
    prepare_data(tmp_path / "out", ["aime2024"], source)
    assert rows(tmp_path / "out", "aime2024") == rows(prepared[0], "aime2024")


def _with_bad(tmp_path: Path, name: str) -> Path:
    """The fixture directory with ``name`` replaced by its bad version."""
    source = tmp_path / "src"
    shutil.copytree(FIXTURES, source, ignore=shutil.ignore_patterns("bad"))
    shutil.copy(FIXTURES / "bad" / name, source / name)
    return source


@pytest.mark.parametrize(
    "bad_file, dataset, message",
    [
        ("gsm8k.jsonl", "gsm8k", r"gsm8k\.jsonl line 2: GSM8K answer has no '#### <number>' line"),
        ("math500.jsonl", "math500", r"math500\.jsonl line 2: not valid JSON"),
        ("math500.jsonl", "math_train", r"math500\.jsonl line 2: not valid JSON"),  # read for the overlap check
        ("humaneval.jsonl", "humaneval", r"humaneval\.jsonl line 1: missing column\(s\) \['entry_point'\]"),
    ],
)
def test_bad_rows_are_named_by_file_and_row_and_exit_with_2(tmp_path, capsys, bad_file, dataset, message):
    source = _with_bad(tmp_path, bad_file)
    with pytest.raises(DataError, match=message):
        prepare_data(tmp_path / "out", [dataset], source)
    assert main(["prepare-data", "--out", str(tmp_path / "out"), "--from-dir", str(source), "--datasets", dataset]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("duet-verl prepare-data: error: ") and str(source) in err


def test_missing_file_and_unknown_dataset(tmp_path, capsys):
    source = tmp_path / "empty"
    source.mkdir()
    with pytest.raises(DataError, match=r"empty/gsm8k\.jsonl: missing file"):
        prepare_data(tmp_path / "out", ["gsm8k"], source)
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare-data", "--out", str(tmp_path), "--datasets", "gsm8k,mmlu"])
    assert exit_info.value.code == 2 and "mmlu" in capsys.readouterr().err


def test_without_the_hub_the_error_names_the_dataset_id_and_the_offline_option(tmp_path):
    """Offline (no cache, ``HF_HUB_OFFLINE=1``): the hub path ends with status 2 and a message naming the hub id."""
    import os
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": root}
    command = [sys.executable, "-m", "duet_verl.cli", "prepare-data", "--out", str(tmp_path), "--datasets", "gsm8k"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("duet-verl prepare-data: error: openai/gsm8k (main) [test]: cannot load from the Hugging")
    assert "--from-dir" in last


def test_verls_dataset_reads_every_prepared_file(prepared):
    """The consumer: verl's ``RLHFDataset`` (chat template, prompt-length filter) on each file."""
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from duet_verl.demo.assets import build_tokenizer

    out, summary = prepared
    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 4096, "filter_overlong_prompts": True})
    tokenizer = build_tokenizer()
    for name in DATASETS:
        dataset = RLHFDataset(data_files=[str(out / f"{name}.parquet")], tokenizer=tokenizer, config=config)
        assert len(dataset) == summary[name]["written"]
        first = dataset[0]
        assert first["data_source"] == DATASETS[name].data_source
        assert first["index"] == rows(out, name)[0]["extra_info"]["index"]
        assert first["reward_model"]["ground_truth"] == rows(out, name)[0]["reward_model"]["ground_truth"]


def test_without_out_it_writes_where_the_recipes_look(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "duet"))  # the recipes' DATA_DIR
    assert main(["prepare-data", "--from-dir", str(FIXTURES), "--datasets", "gsm8k"]) == 0
    assert (tmp_path / "duet" / "gsm8k.parquet").exists()
