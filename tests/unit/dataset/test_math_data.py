"""load_math_split (synthetic and local GSM8K files) and chat prompt formatting."""

import json

import datasets
import pytest
from helpers import FIXTURES

from rlhf.config import DatasetConfig
from rlhf.dataset import format_prompt, load_math_split
from rlhf.task.math_grading import reference_answer

SAMPLE = FIXTURES / "gsm8k_sample.jsonl"
SAMPLE_REFERENCES = ["216", "100", "173", "110", "37500", "-5", "2.25", "240"]


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def gsm8k_cfg(path, **kw):
    return DatasetConfig(name="gsm8k", hub_id="openai/gsm8k", hub_config="main", path=str(path), **kw)


def sample_rows():
    return [json.loads(line) for line in SAMPLE.read_text().splitlines()]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_synthetic_split():
    cfg = DatasetConfig(num_train=30, num_test=12, seed=1)
    train, test = load_math_split(cfg, "train"), load_math_split(cfg, "test")
    assert isinstance(train, datasets.Dataset) and (len(train), len(test)) == (30, 12)
    assert {"question", "answer", "operation", "num_steps"} <= set(train.column_names)
    assert all(isinstance(q, str) and isinstance(a, str) for q, a in zip(train["question"], train["answer"]))
    assert not set(train["question"]) & set(test["question"])
    assert load_math_split(cfg, "train")["question"] == train["question"]


def test_bad_split_and_name():
    with pytest.raises(ValueError, match="split"):
        load_math_split(DatasetConfig(), "validation")
    with pytest.raises(ValueError, match="dataset.name"):
        load_math_split(DatasetConfig(name="hh_rlhf"), "train")
    with pytest.raises(ValueError, match="dataset.hub_id"):
        load_math_split(DatasetConfig(name="gsm8k"), "train")  # no hub id, no path: fails before any download


def test_gsm8k_local_jsonl():
    ds = load_math_split(gsm8k_cfg(SAMPLE), "test")
    assert len(ds) == 8 and set(ds.column_names) == {"question", "answer"}
    assert [reference_answer(a) for a in ds["answer"]] == SAMPLE_REFERENCES
    assert ds[0]["question"].startswith("A bakery sells muffins")
    small = load_math_split(gsm8k_cfg(SAMPLE, num_train=3), "train")
    assert small["question"] == ds["question"][:3]


def test_gsm8k_split_placeholder_and_parquet(tmp_path):
    rows = sample_rows()
    write_jsonl(tmp_path / "gsm_train.jsonl", rows[:5])
    write_jsonl(tmp_path / "gsm_test.jsonl", rows[5:])
    cfg = gsm8k_cfg(tmp_path / "gsm_{split}.jsonl")
    assert len(load_math_split(cfg, "train")) == 5 and len(load_math_split(cfg, "test")) == 3
    parquet = tmp_path / "gsm.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    ds = load_math_split(gsm8k_cfg(parquet, num_test=4), "test")
    assert ds["answer"] == [r["answer"] for r in rows[:4]]


@pytest.mark.parametrize("row_index,change,message", [
    (5, lambda r: r.pop("answer"), "dataset gsm8k row 5: missing field 'answer'"),
    (3, lambda r: r.update(answer="The answer is 110."), "dataset gsm8k row 3: field 'answer' has no '#### <answer>' line"),
    (0, lambda r: r.update(question="   "), "dataset gsm8k row 0: field 'question' is empty"),
    (2, lambda r: r.update(answer=173), "dataset gsm8k row 2: field 'answer' must be a string"),
    (7, lambda r: r.pop("question"), "dataset gsm8k row 7: missing field 'question'"),
])
def test_gsm8k_bad_row_names_index(tmp_path, row_index, change, message):
    rows = sample_rows()
    change(rows[row_index])
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError) as err:
        load_math_split(gsm8k_cfg(bad), "train")
    assert message in str(err.value)


def test_gsm8k_malformed_line_names_index(tmp_path):
    lines = SAMPLE.read_text().splitlines()
    lines[4] = lines[4][:-3]  # cut the closing quote and brace
    lines[6] = "[1, 2]"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="dataset gsm8k row 4: not valid JSON"):
        load_math_split(gsm8k_cfg(bad), "train")
    lines[4] = json.dumps(sample_rows()[4])
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="dataset gsm8k row 6: expected a JSON object"):
        load_math_split(gsm8k_cfg(bad), "train")


def test_gsm8k_bad_row_beyond_limit_is_not_read(tmp_path):
    rows = sample_rows()
    rows[7].pop("answer")
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    assert len(load_math_split(gsm8k_cfg(bad, num_test=7), "test")) == 7


def test_gsm8k_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.path"):
        load_math_split(gsm8k_cfg(tmp_path / "missing.jsonl"), "train")
    (tmp_path / "gsm.csv").write_text("question,answer\n")
    with pytest.raises(ValueError, match="unsupported extension"):
        load_math_split(gsm8k_cfg(tmp_path / "gsm.csv"), "train")


def test_format_prompt(tokenizer):
    question = "Tom has 3 apples. He buys 4 more. How many apples does he have?"
    system = "Solve the problem. End your reply with a line '#### <answer>'."
    text = format_prompt(tokenizer, question, system)
    expected = tokenizer.apply_chat_template(
        [{"role": "system", "content": system}, {"role": "user", "content": question}],
        tokenize=False, add_generation_prompt=True,
    )
    assert isinstance(text, str) and text == expected
    assert text.index(system) < text.index(question)
    assert text.rstrip().endswith("assistant")  # ready for the reply

    plain = format_prompt(tokenizer, question, None)
    assert system not in plain and question in plain
    assert plain == tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    assert format_prompt(tokenizer, question, "") == plain


def test_format_prompt_without_template(tokenizer):
    class Bare:
        chat_template = None
        name_or_path = "base-model"

    with pytest.raises(ValueError, match="no chat template"):
        format_prompt(Bare(), "q", None)
