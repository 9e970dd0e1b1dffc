import csv

from engine.train.history import History


def _rows(path):
    with path.open(newline="") as handle:
        return [(r["step"], r["split"]) for r in csv.DictReader(handle)]


def test_resume_drops_later_rows_and_the_final_best_row(tmp_path):
    path = tmp_path / "history.csv"
    history = History(path, ["step", "split", "miou"], resume_step=None, enabled=True)
    for step, split in [(2, "train"), (2, "val"), (4, "train"), (4, "val"), (2, "test@best")]:
        history.write({"step": step, "split": split, "miou": 0.5})
    History(path, ["step", "split", "miou"], resume_step=2, enabled=True)
    assert _rows(path) == [("2", "train"), ("2", "val")]


def test_a_fresh_history_starts_empty_and_disabled_ranks_write_nothing(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("step,split,miou\n1,train,0.1\n")
    History(path, ["step", "split", "miou"], resume_step=None, enabled=True)
    assert _rows(path) == []
    History(tmp_path / "other.csv", ["step"], resume_step=None, enabled=False).write({"step": 1})
    assert not (tmp_path / "other.csv").exists()
