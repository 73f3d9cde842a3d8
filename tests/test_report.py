"""`heal-jax report`: a Markdown + PNG report from a real (short) training run, phases, ablations, no text."""

from __future__ import annotations

import json
import pathlib
import re

import jax
import pytest

from heal_jax import config as config_lib, report
from heal_jax.train import loop

from tests import train_helpers

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
  """(corpus root, work directory of a 12-step run with held-out evaluation at steps 6 and 12)."""
  root = train_helpers.make_corpus(tmp_path_factory.mktemp("report_data"))
  config = train_helpers.load(root, steps=12, extra=(
      "--config.eval.holdout_examples=4", "--config.eval.every_steps=6", "--config.eval.batches=1",
      "--config.mesh.fsdp=1", "--config.checkpoint.every_steps=100"))
  workdir = tmp_path_factory.mktemp("report_run") / "run"
  loop.train(config, workdir, devices=jax.devices()[:1])  # one device: the fastest to compile
  return root, workdir


def _rows(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _corpus_sentences(root: pathlib.Path) -> list[str]:
  out = []
  for path in sorted((root / "corpus").glob("*.jsonl")):
    for line in path.read_text().splitlines()[:5]:
      for value in json.loads(line).values():
        if isinstance(value, str):
          out += [s.strip() for s in re.split(r"[.\n?]", value) if len(s.strip()) > 25]
  return out


def _check_pngs(text: str, out: pathlib.Path) -> list[str]:
  names = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
  for name in names:
    assert (out / name).read_bytes()[:8] == PNG_SIGNATURE, name
  return names


def test_report_of_a_training_run(run_dir, tmp_path):
  root, workdir = run_dir
  out = tmp_path / "report"
  path = report.build_report(workdir, out)
  text = path.read_text()
  assert path == out / "report.md"
  names = _check_pngs(text, out)
  assert {"loss.png", "loss_per_source.png", "mixture.png", "throughput.png", "eval_loss.png"} <= set(names)

  rows = _rows(workdir)
  train = [r for r in rows if r["kind"] == "train"]
  evals = [r for r in rows if r["kind"] == "eval"]
  assert [r["step"] for r in evals] == [6, 12]
  assert "| pretrain | 0..12 | 64 | 8 | 6,144 |" in text  # phase span, seq_len, batch, tokens seen
  assert "| steps run | 12 of 12 |" in text and "| token slots seen (rows x seq_len, padding included) | 6,144 |" in text
  assert f"| final train loss | {train[-1]['loss']:.4f} |" in text
  seconds = sum(r["step_time_s"] for r in train)  # metrics.every_steps=1: one row per step
  assert f"| training time (s) | {seconds:.1f} |" in text
  for source in ("clinical", "general", "medical"):  # train loss and held-out loss at the phase end
    assert f"| {source} | {train[-1][f'loss/{source}']:.4f} | {evals[-1][f'loss/{source}']:.4f} |" in text
  assert f"| instructions |  | {evals[-1]['loss/instructions']:.4f} |" in text  # held out, not trained on

  sentences = _corpus_sentences(root)
  assert len(sentences) > 20
  for sentence in sentences:
    assert sentence not in text and sentence.lower() not in text.lower()


def test_cli_ablation_with_eval_results(run_dir, tmp_path, capsys):
  _, workdir = run_dir
  other = tmp_path / "other"
  other.mkdir()
  for name in ("metrics.jsonl", "config.json"):
    (other / name).write_text((workdir / name).read_text())
  (other / "eval_results.json").write_text(json.dumps({"pubmedqa/acc": 0.5521, "medqa/acc": 0.25, "note": "x"}))
  out = tmp_path / "ablation"
  assert report.main(["--workdir", str(workdir), "--out", str(out), "--ablation", f"{workdir},{other}",
                      "--names", "base,mixed"]) == 0
  summary = json.loads(capsys.readouterr().out)
  text = (out / "report.md").read_text()
  assert "ablation.png" in _check_pngs(text, out) and "ablation.png" in summary["plots"]
  assert "| metric | base | mixed |" in text
  assert "| pubmedqa/acc |  | 0.5521 |" in text and "| medqa/acc |  | 0.2500 |" in text
  assert "note" not in re.findall(r"^\| (\S+) \|", text, re.M)  # non-numbers are skipped
  final = [r for r in _rows(workdir) if r["kind"] == "eval"][-1]["loss/general"]
  assert f"| held-out loss/general | {final:.4f} | {final:.4f} |" in text


def _write_config(workdir: pathlib.Path, *overrides: str) -> None:
  """WORKDIR/config.json as the trainer saves it: configs/tiny.py with `overrides`, resolved."""
  (workdir / "config.json").write_text(config_lib.load_config(str(train_helpers.TINY), overrides).to_json(indent=2))


def test_phases_resume_and_mfu(tmp_path):
  """Two phases from config.json, a resumed run's repeated steps (the later rows win), MFU when present."""
  workdir = tmp_path / "w"
  workdir.mkdir()
  _write_config(workdir, "--config.phase_order=pretrain,extend", "--config.train.global_batch=4",
                "--config.phases.pretrain.steps=4", "--config.phases.pretrain.seq_len=16",
                "--config.phases.pretrain.global_batch=0", "--config.phases.pretrain.warmup_steps=1",
                "--config.phases.extend.steps=2", "--config.phases.extend.seq_len=32",
                "--config.phases.extend.global_batch=2", "--config.phases.extend.warmup_steps=1")
  rows = [{"step": s, "kind": "train", "time": float(s), "loss": 5.0 - 0.1 * s, "step_time_s": 1.0,
           "tokens_per_s": 64.0, "mfu": 0.25, "loss/a": 4.0 - 0.1 * s, "share/a": 1.0} for s in (1, 2, 3, 3, 4)]
  rows[3]["loss"] = 4.6543  # the resumed run's row for step 3
  for row, fill in zip(rows, (0.2, 0.4, 0.1, 0.6, 0.8)):  # the resumed run's step 3 (0.6) replaces 0.1
    row["fill"] = fill
  rows += [{"step": 4, "kind": "eval", "time": 9.0, "loss/a": 3.1234}]
  rows += [{"step": s, "kind": "train", "time": 9.0 + s, "loss": 4.0, "step_time_s": 2.0, "tokens_per_s": 32.0,
            "mfu": 0.5, "loss/a": 3.5, "share/a": 1.0} for s in (5, 6)]
  rows[-1]["fill"] = 0.9  # step 6; step 5's row has none (logs from before the fill was logged)
  rows += [{"step": 6, "kind": "eval", "time": 16.0, "notes/rougeL": 0.25, "pubmedqa/acc": 0.5}]
  (workdir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + '\n{"step": 7, "ki')
  text = report.build_report(workdir, tmp_path / "out").read_text()
  assert "| pretrain | 0..4 | 16 | 4 | 256 | 4.0 | 64 | 25.0% | 50.0% | 4.6000 |" in text  # fill (.2+.4+.6+.8)/4
  assert "| extend | 4..6 | 32 | 2 | 128 | 4.0 | 32 | 50.0% | 90.0% | 4.0000 |" in text
  assert "| a | 3.6000 | 3.1234 | 3.5000 |  |" in text
  assert "Throughput and MFU" in text
  assert "| metric | pretrain | extend |" in text  # the other evaluations, by phase
  assert "| notes/rougeL |  | 0.2500 |" in text and "| pubmedqa/acc |  | 0.5000 |" in text
  _check_pngs(text, tmp_path / "out")
  (workdir / "metrics.jsonl").write_text('{"step": 1, "kind": "train"}\nnot json\n{"step": 2, "kind": "train"}\n')
  with pytest.raises(report.ReportError, match=r"metrics.jsonl:2: malformed"):
    report.build_report(workdir, tmp_path / "out2")
  assert report.main(["--workdir", str(tmp_path / "missing")]) == 2


def test_a_config_json_the_trainer_would_refuse_is_named(tmp_path):
  """config.json's phases are read as a resume reads them; one it would refuse stops the report, named."""
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text('{"step": 1, "kind": "train", "loss": 1.0}\n')
  _write_config(workdir, "--config.phase_order=pretrain", "--config.phases.pretrain.steps=8")
  config = json.loads((workdir / "config.json").read_text())
  config["phases"]["pretrain"]["warmup_steps"] = 9  # past its steps: never valid
  (workdir / "config.json").write_text(json.dumps(config))
  with pytest.raises(report.ReportError, match=r"config.json: cannot read the phases \(ValueError: "
                                               r"config.phases.pretrain: warmup_steps=9 is more than"):
    report.build_report(workdir, tmp_path / "out")
  (workdir / "config.json").write_bytes(b'{\n"seed": "\xff"}\n')
  with pytest.raises(report.ReportError, match=r"config.json:2: not UTF-8 \(byte 0xff\)$"):
    report.build_report(workdir, tmp_path / "out")


def test_rows_of_an_attempt_a_restart_replaced_are_dropped(tmp_path):
  """An attempt killed at step 5 after the checkpoint of step 2 left rows 3-5 and an eval at 4; the
  restart from 2 logged 3-4 and stopped. The report used to count step 5 (steps run 5, its loss)."""
  workdir = tmp_path / "w"
  workdir.mkdir()
  _write_config(workdir, "--config.phase_order=pretrain", "--config.train.global_batch=4",
                "--config.phases.pretrain.steps=8", "--config.phases.pretrain.seq_len=16",
                "--config.phases.pretrain.global_batch=0", "--config.phases.pretrain.warmup_steps=1")
  row = lambda s, loss, **kw: {"step": s, "kind": "train", "time": float(s), "loss": loss, "step_time_s": 1.0, **kw}
  rows = [row(1, 5.0), row(2, 4.0), row(3, 9.0), row(4, 9.0), {"step": 4, "kind": "eval", "loss/a": 9.9},
          row(5, 9.0, skipped_steps=1), row(3, 3.0), row(4, 2.5, skipped_steps=2)]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  train, evals = report.read_metrics(workdir / "metrics.jsonl")
  assert [(r["step"], r["loss"]) for r in train] == [(1, 5.0), (2, 4.0), (3, 3.0), (4, 2.5)] and evals == []
  text = report.build_report(workdir, tmp_path / "out").read_text()
  assert "| steps run | 4 of 8 |" in text and "| final train loss | 2.5000 |" in text
  assert "| skipped steps (non-finite loss or gradient, or no target token) | 2 |" in text


def test_a_missing_work_directory_is_an_error_that_writes_nothing(tmp_path, capsys):
  assert report.main(["--workdir", str(tmp_path / "typo")]) == 2
  assert "typo" in capsys.readouterr().err
  assert not (tmp_path / "typo").exists()


def test_without_config_eval_rows_or_utf8(tmp_path, capsys):
  """No config.json: row length, batch, tokens and planned steps read as unknown, not 0. A plot the
  report no longer draws is removed (an older report's eval_loss.png), while other PNGs stay. A byte
  that is not UTF-8 is named by file and line; a truncated last row before a blank line is skipped."""
  workdir = tmp_path / "w"
  workdir.mkdir()
  rows = [{"step": s, "kind": "train", "time": float(s), "loss": 3.0, "step_time_s": 1.0, "tokens_per_s": 8.0,
           "loss/a": 3.0, "share/a": 1.0} for s in (1, 2)]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "k\n\n')
  out = workdir / "report"
  out.mkdir()
  for name in ("eval_loss.png", "ablation.png", "mine.png"):
    (out / name).write_bytes(PNG_SIGNATURE)
  assert report.main(["--workdir", str(workdir)]) == 0
  printed = json.loads(capsys.readouterr().out.splitlines()[-1])
  text = (out / "report.md").read_text()
  assert "Work directory: `w` (`..` from this folder)" in text
  assert "| steps run | 2 (planned: unknown, no config.json) |" in text
  assert "| token slots seen (rows x seq_len, padding included) | unknown (no config.json) |" in text
  assert "| run | 0..2 | ? | ? | ? |" in text
  assert "No held-out evaluation rows yet" in text
  assert printed["plots"] == _check_pngs(text, out) and "eval_loss.png" not in printed["plots"]
  assert sorted(p.name for p in out.glob("*.png")) == sorted(printed["plots"] + ["mine.png"])
  (workdir / "metrics.jsonl").write_bytes(b'{"step": 1, "kind": "train"}\n{"step": 2, "note": "caf\xe9"}\n')
  assert report.main(["--workdir", str(workdir)]) == 2
  assert f"{workdir / 'metrics.jsonl'}:2: not UTF-8 (byte 0xe9)" in capsys.readouterr().err
  assert report.main(["--workdir", str(workdir), "--out", str(workdir / "metrics.jsonl")]) == 2
  assert "a file, not a directory" in capsys.readouterr().err
  (workdir / "metrics.jsonl").write_text('{"step": 1e400, "kind": "train"}\n{"step": 2, "kind": "train"}\n')
  with pytest.raises(report.ReportError, match=r"metrics.jsonl:1: malformed metrics row"):
    report.build_report(workdir, out)
  with pytest.raises(SystemExit):  # an empty arm name (a trailing comma) would make an unnamed column
    report.main(["--ablation", str(workdir), "--names", "a,", "--out", str(out)])
  assert "arm names must be non-empty" in capsys.readouterr().err
