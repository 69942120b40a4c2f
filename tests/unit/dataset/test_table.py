"""rlhf.dataset.table: in-memory datasets with a content fingerprint computed without pickling (datasets' own dill
hashing fails under Python 3.12 on pyarrow's MonthDayNano)."""

from rlhf.dataset.table import dataset_from_columns, dataset_from_rows


def test_fingerprint_follows_content_and_rows_keep_every_key_in_order():
    a = dataset_from_columns({"q": ["1+1", "2+2"], "a": [2, 4]})
    assert a.column_names == ["q", "a"] and a["a"] == [2, 4]
    assert a._fingerprint == dataset_from_columns({"q": ["1+1", "2+2"], "a": [2, 4]})._fingerprint
    assert a._fingerprint != dataset_from_columns({"q": ["1+1", "2+2"], "a": [2, 5]})._fingerprint
    b = dataset_from_rows([{"q": "x", "a": 1, "note": "n"}, {"q": "y", "a": 2, "extra": "e"}])
    assert b.column_names == ["q", "a", "note"] and b["note"] == ["n", None]  # as from_list: the first row's keys
    assert len(b.select(range(1))) == 1  # later transforms fingerprint from it as usual
