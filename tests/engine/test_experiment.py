"""The run sequencer behind the demo and the benchmarks (d2kd/tools/experiment.py)."""
import json
import os

import pytest

from d2kd.tools import demo
from d2kd.tools.experiment import RESULT_FILE, Run, RunSequence, format_table, load_result, plot_results


def _tiny_run(tmp_path, train_net, name="frcnn", max_iter=6):  # detectron2 times from iter 3
    return Run(name=name, config=train_net.config, output_dir=str(tmp_path / name), max_iter=max_iter,
               overrides=(*train_net.tiny, "train.eval_period=0", "train.checkpointer.period=100000"))


def test_a_run_trains_evaluates_and_is_reused(tmp_path, train_net, capsys):
    run = _tiny_run(tmp_path, train_net)
    (result,) = RunSequence([run], title="t").run()
    assert not result.reused
    assert set(result.ap) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert result.sec_per_iter > 0
    stored = json.load(open(os.path.join(run.output_dir, RESULT_FILE)))
    assert stored["ap"] == result.ap

    # the same run again is read back, not trained (train_net.log is not rewritten)
    log = os.path.join(run.output_dir, "train_net.log")
    mtime = os.path.getmtime(log)
    (again,) = RunSequence([run], title="t").run()
    assert again.reused and again.ap == result.ap
    assert os.path.getmtime(log) == mtime
    assert "reusing" in capsys.readouterr().out

    # another schedule or other overrides are another run
    assert load_result(_tiny_run(tmp_path, train_net, max_iter=7)) is None
    other = Run(run.name, run.config, run.output_dir, run.max_iter, run.overrides + ("optimizer.lr=0.001",))
    assert load_result(other) is None

    table = format_table([result, again], reference="frcnn")
    assert "| frcnn |" in table and "+0.0" in table
    assert os.path.getsize(plot_results([result], str(tmp_path / "p.png"), "t")) > 0


def test_a_failing_run_names_its_log(tmp_path, train_net):
    run = _tiny_run(tmp_path, train_net)
    run.overrides = run.overrides + ("model.no_such_key=1",)
    with pytest.raises(RuntimeError, match="train_net.log"):
        RunSequence([run]).run()
    assert not os.path.exists(os.path.join(run.output_dir, RESULT_FILE))


def test_demo_wires_the_teacher_it_trains_into_the_distilled_run(tmp_path):
    teacher, student, distilled = demo.build_runs(str(tmp_path), teacher_iters=7, student_iters=5)
    assert (teacher.max_iter, student.max_iter, distilled.max_iter) == (7, 5, 5)
    assert f"model.teacher.weights={teacher.output_dir}/model_final.pth" in distilled.overrides
    assert len({teacher.output_dir, student.output_dir, distilled.output_dir}) == 3


def test_run_key_follows_config_code_and_dependencies(tmp_path):
    """A finished run is reused only while its config code (the file and every config it
    imports, comments aside) and the files it depends on are unchanged."""
    import shutil

    from d2kd.tools import experiment

    configs = tmp_path / "configs"
    (configs / "common").mkdir(parents=True)
    (configs / "common" / "part.py").write_text("value = 1\n")
    (configs / "main.py").write_text("from .common.part import value\nx = value\n")
    assert experiment.config_sources(str(configs / "main.py")) == sorted(
        [str(configs / "main.py"), str(configs / "common" / "part.py")])
    dep = tmp_path / "teacher" / experiment.RESULT_FILE
    dep.parent.mkdir()
    dep.write_text(json.dumps({"fingerprint": "aaa"}))
    run = Run("r", str(configs / "main.py"), str(tmp_path / "out"), 5, depends_on=(str(dep),))
    key = run.fingerprint()
    (configs / "common" / "part.py").write_text("# a comment\nvalue = 1  # and another\n")
    assert run.fingerprint() == key  # comments do not count
    (configs / "common" / "part.py").write_text("value = 2\n")
    assert run.fingerprint() != key  # an imported config's code does
    (configs / "common" / "part.py").write_text("value = 1\n")
    assert run.fingerprint() == key
    dep.write_text(json.dumps({"fingerprint": "bbb"}))  # the teacher was retrained
    assert run.fingerprint() != key
    shutil.rmtree(dep.parent)
    assert run.fingerprint() != key  # a missing dependency is not the one trained with


def test_demo_runs_depend_on_their_backbones_and_teacher(tmp_path):
    teacher, student, distilled = demo.build_runs("out", teacher_iters=7, student_iters=5, seed=1)
    files = demo.backbone_files()
    assert files[50] in teacher.depends_on and files[18] in student.depends_on
    assert os.path.join(teacher.path, RESULT_FILE) in distilled.depends_on
    assert "train.seed=1" in student.overrides and "train.seed=1" in distilled.overrides
    assert not os.path.isabs(teacher.output_dir) and teacher.path == os.path.join(
        os.path.dirname(os.path.dirname(demo.__file__)).rsplit(os.sep, 1)[0], "out", os.path.basename(teacher.output_dir))
