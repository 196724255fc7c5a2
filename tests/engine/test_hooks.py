"""The training-curves plot: loss and AP over iterations, history kept across --resume."""
import json

from detectron2.utils.events import EventStorage

from d2kd.engine.hooks import TrainingCurves, plot_training_curves, read_metrics, training_writers


class _FakeTrainer:
    def __init__(self, storage, start_iter):
        self.storage = storage
        self.start_iter = start_iter


def test_plot_is_written(tmp_path):
    path = tmp_path / "curves.png"
    plot_training_curves(str(path), [(i, 1.0 / (i + 1)) for i in range(30)],
                         {"bbox/AP": [(9, 1.0), (19, 3.5)]}, smoothing=5)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hook_redraws_after_eval_and_keeps_resumed_history(tmp_path):
    # An earlier run (iterations 0..4, one eval at 4) and a partial last line from a kill.
    with open(tmp_path / "metrics.json", "w") as f:
        for i in range(5):
            f.write(json.dumps({"iteration": i, "total_loss": 2.0 - 0.1 * i}) + "\n")
        f.write(json.dumps({"iteration": 4, "bbox/AP": 1.5}) + "\n")
        f.write(json.dumps({"iteration": 5, "bbox/AP": 2.0}) + "\n")  # final eval at max_iter=5
        f.write(json.dumps({"iteration": 7, "total_loss": 9.0}) + "\n")  # redone after resume
        f.write(json.dumps({"iteration": 7, "bbox/AP": 9.0}) + "\n")
        f.write('{"iteration": 8, "tot')
    assert len(read_metrics(str(tmp_path / "metrics.json"))) == 9

    hook = TrainingCurves(str(tmp_path), "curves.png", smoothing=3)
    with EventStorage(5) as storage:
        hook.trainer = _FakeTrainer(storage, start_iter=5)
        hook.before_train()
        for it in range(5, 8):
            storage.iter = it
            storage.put_scalar("total_loss", 1.0)
            hook.after_step()
        assert not (tmp_path / "curves.png").exists()  # no new eval yet
        storage.put_scalars(**{"bbox/AP": 4.0}, smoothing_hint=False)
        hook.after_step()
        assert (tmp_path / "curves.png").exists()
        loss, ap = hook._current()
    assert [i for i, _ in loss] == [0, 1, 2, 3, 4, 5, 6, 7]  # iteration 7 of the old run dropped
    assert [v for _, v in loss][-1] == 1.0
    assert ap == {"bbox/AP": [(4, 1.5), (5, 2.0), (7, 4.0)]}


def _stale_metrics(path, iters):
    with open(path, "w") as f:
        for i in iters:
            f.write(json.dumps({"iteration": i, "total_loss": 5.0}) + "\n")


def test_new_run_drops_an_unfinished_runs_records_and_resumed_run_keeps_earlier_ones(tmp_path):
    # An interrupted run left iterations 19..239 behind; the demo then starts the run again.
    metrics = tmp_path / "metrics.json"
    _stale_metrics(metrics, range(19, 240, 20))
    for writer in training_writers(str(tmp_path), max_iter=300, resume_at=None):
        writer.close()
    assert read_metrics(str(metrics)) == []

    _stale_metrics(metrics, range(19, 240, 20))
    for writer in training_writers(str(tmp_path), max_iter=300, resume_at=100):
        writer.close()
    assert [r["iteration"] for r in read_metrics(str(metrics))] == [19, 39, 59, 79, 99]
