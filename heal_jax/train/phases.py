"""A run as an ordered list of phases, and which phase a global step belongs to."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from heal_jax.data import check
from heal_jax.model.config import ConfigError, ModelConfig
from heal_jax.train.optimizer import SCHEDULES, OptimizerSpec, learning_rate


@dataclasses.dataclass(frozen=True)
class Phase:
  """One phase; `start` is the global step it begins at (the sum of the steps before it)."""
  name: str
  index: int
  start: int
  steps: int
  seq_len: int
  weights: dict[str, float]
  rope_scaling_factor: float
  instruction_tuning: bool
  optimizer: OptimizerSpec
  global_batch: int

  @property
  def end(self) -> int:
    return self.start + self.steps


def parse_pairs(spec: str, key: str) -> dict[str, str]:
  """"a=x,b=y" -> {"a": "x", "b": "y"} (`check.parse_pairs`); errors name the config key."""
  try:
    return check.parse_pairs(spec)
  except ValueError as e:
    raise ValueError(f"{key}: {e}") from None


def parse_weights(spec: str, key: str, sources: dict[str, float]) -> dict[str, float]:
  """"a=1,b=2.5,c" -> {"a": 1.0, "b": 2.5, "c": sources["c"]}: a bare name takes the source's own
  weight (config.data.sources.NAME.weight); errors name the config key."""
  weights = {}
  for item in filter(None, (s.strip() for s in spec.split(","))):
    name, sep, value = (part.strip() for part in item.partition("="))
    if not name or (sep and not value):
      raise ValueError(f"{key}: bad entry {item!r}, expected source=number or a source name")
    if name in weights:
      raise ValueError(f"{key}: {name!r} is given twice")
    if name not in sources:
      raise ValueError(f"{key}: unknown source {name!r}; config.data.sources has {sorted(sources)}")
    if not sep:
      weights[name] = sources[name]
      continue
    try:
      weights[name] = float(value)
    except ValueError:
      raise ValueError(f"{key}: bad weight {name}={value!r}, expected source=number") from None
  return weights


def from_config(config: Any) -> list[Phase]:
  """The single reader of config.phase_order, config.phases and the optimizer fields of config.train.

  phase_order says which phases run and in which order (a preset may define more, e.g. to run only
  the pretraining phase with --config.phase_order=pretrain).
  """
  names = [n.strip() for n in config.phase_order.split(",") if n.strip()]
  if not names:
    raise ValueError("config.phase_order is empty: name at least one phase of config.phases")
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise ValueError(f"config.phase_order names phase(s) {twice} more than once")
  unknown = [n for n in names if n not in config.phases]
  if unknown:
    raise ValueError(f"config.phase_order names unknown phase(s) {unknown}; config.phases has "
                     f"{sorted(config.phases.keys())}")
  sources = {name: float(src.weight) for name, src in config.data.sources.items()}
  train = config.train
  phases, start = [], 0
  for i, name in enumerate(names):
    p = config.phases[name]
    key = f"config.phases.{name}"
    named = {n.partition("=")[0].strip() for n in p.weights.split(",") if "=" in n}  # numbers given here
    weights = parse_weights(p.weights, f"{key}.weights", sources) if p.weights.strip() else dict(sources)
    if not weights:
      raise ValueError(f"{key}.weights={p.weights!r} names no source" if p.weights.strip()
                       else "config.data.sources is empty")
    for src, w in weights.items():
      if not 0 < w < math.inf:  # NaN fails too
        where = f"{key}.weights: source {src!r} has" if src in named else f"config.data.sources.{src}.weight:"
        raise ValueError(f"{where} weight {w}; a weight is a finite number > 0 (leave a source out rather "
                         "than give it weight 0)")
    for field, ok, need in (
        ("steps", p.steps > 0, "> 0"), ("seq_len", p.seq_len >= 2, ">= 2"),
        ("global_batch", p.global_batch >= 0, ">= 0 (0: config.train.global_batch)"),
        ("warmup_steps", p.warmup_steps >= 0, ">= 0"), ("peak_lr", p.peak_lr >= 0, ">= 0"),
        ("end_lr_ratio", 0 <= p.end_lr_ratio <= 1, "in [0, 1]"),
        ("rope_scaling_factor", p.rope_scaling_factor >= 1, ">= 1 (1: no interpolation; 2 doubles the usable "
                                                            "context)")):
      if not ok:  # (NaN fails every comparison)
        raise ValueError(f"{key}.{field}={getattr(p, field)!r}: must be {need}")
    if p.warmup_steps > p.steps:
      raise ValueError(f"{key}: warmup_steps={p.warmup_steps} is more than the phase's steps={p.steps}: the "
                       f"learning rate would never reach peak_lr (set {key}.warmup_steps as well)")
    opt = OptimizerSpec(peak_lr=p.peak_lr, steps=p.steps, warmup_steps=p.warmup_steps, schedule=p.schedule,
                        end_lr_ratio=p.end_lr_ratio, weight_decay=train.weight_decay, b1=train.b1,
                        b2=train.b2, eps=train.eps, clip_norm=train.clip_norm)
    if p.schedule not in SCHEDULES:  # checked here, at start-up, not when the phase begins
      raise ValueError(f"{key}.schedule={p.schedule!r}; expected one of {', '.join(SCHEDULES)}")
    phases.append(Phase(name, i, start, p.steps, p.seq_len, weights, p.rope_scaling_factor,
                        p.instruction_tuning, opt, p.global_batch or train.global_batch))
    start += p.steps
  return phases


_RAN_WITH = ("steps", "seq_len", "weights", "rope_scaling_factor", "instruction_tuning", "global_batch")
_OPTIMIZER_RAN_WITH = ("peak_lr", "warmup_steps", "schedule", "end_lr_ratio")


def check_history(saved: list[Phase], now: list[Phase], step: int) -> None:
  """A resume at `step` keeps what already ran: every phase that finished by `step` (as saved with
  the checkpoint; not the last saved phase, which may be lengthened) is in `now` at the same place
  with the same settings, and the phase running at `step` is the same phase. Else ValueError naming
  the config keys (a changed finished phase would also move the phases after it, and config.json
  and the report would describe a run that did not happen)."""
  for old in saved:
    if old.start > step or (old.start == step and old.index > 0):
      break
    new = next((p for p in now if p.index == old.index), None)
    if new is None or new.name != old.name:
      raise ValueError(f"config.phase_order: phase {old.index} was {old.name!r} in the run being resumed (at "
                       f"step {step}), now {new.name if new else None!r}; a resume keeps the phases that already ran")
    if old.end > step or old is saved[-1]:  # running (its settings are checked with the data state), or the
      return                                 # last phase, done: it may be lengthened to train on
    changed = [f"config.phases.{old.name}.{f}: saved {getattr(old, f)!r}, now {getattr(new, f)!r}"
               for f in _RAN_WITH if getattr(old, f) != getattr(new, f)]
    changed += [f"config.phases.{old.name}.{f}: saved {getattr(old.optimizer, f)!r}, now {getattr(new.optimizer, f)!r}"
                for f in _OPTIMIZER_RAN_WITH if getattr(old.optimizer, f) != getattr(new.optimizer, f)]
    if changed:
      raise ValueError(f"phase {old.name} finished before step {step}, where this run resumes, with other settings: "
                       f"{'; '.join(changed)}. A resume keeps the phases that already ran; to change them, train "
                       "in a new --workdir with --config.init_from=THIS_WORKDIR")


def resized_note(saved: list[Phase], now: list[Phase], step: int) -> str | None:
  """What changes when the phase that reached `step` (running, or the last one, done) has another
  number of steps now than when saved: its learning-rate schedule is recomputed over the new length,
  so the rate at `step` moves (a cosine decay lengthened after it ended rises again). None if same."""
  old = next((p for p in saved if p.start < step <= p.end), None)
  new = next((p for p in now if old is not None and p.index == old.index), None)
  if old is None or new is None or new.steps == old.steps:
    return None
  ran = step - old.start
  was, will = float(learning_rate(old.optimizer)(ran)), float(learning_rate(new.optimizer)(ran))
  return (f"phase {old.name} now has {new.steps} steps (saved with {old.steps}, {ran} of them run): its learning-rate "
          f"schedule is recomputed over {new.steps} steps, so the rate at step {step} is {will:.2e} (it was {was:.2e})")


def phase_at(phases: list[Phase], step: int) -> Phase | None:
  """The phase that global step `step` (0-based, the next step to run) belongs to; None when done."""
  for phase in phases:
    if phase.start <= step < phase.end:
      return phase
  return None


def model_config(base: ModelConfig, phase: Phase) -> ModelConfig:
  """The model of a phase: its rope scaling, and a context at least the phase's seq_len.

  ConfigError if the base model sets a rope scaling of its own: in training, the phases set it.
  """
  if base.rope_scaling_factor != 1.0:
    raise ConfigError(f"config.model.rope_scaling_factor={base.rope_scaling_factor:g} is not used in training: each "
                      f"phase sets its own (config.phases.{phase.name}.rope_scaling_factor="
                      f"{phase.rope_scaling_factor:g}); set it there and leave the model's at 1")
  return base.replace(rope_scaling_factor=phase.rope_scaling_factor,
                      max_position_embeddings=max(base.max_position_embeddings, phase.seq_len))


def context_note(phases: list[Phase], phase: Phase, base: ModelConfig, from_checkpoint: bool) -> str:
  """A note when `phase`'s rows reach positions the model has not been trained at: past (in positions
  before interpolation, seq_len / rope_scaling_factor) both config.model.max_position_embeddings, when
  the run starts from a checkpoint, and every earlier phase's rows. "" otherwise, and for a first phase
  trained from scratch."""
  seen = [p.seq_len / p.rope_scaling_factor for p in phases[:phase.index]]
  if from_checkpoint:
    seen.append(float(base.max_position_embeddings))
  if not seen or phase.seq_len / phase.rope_scaling_factor <= max(seen):
    return ""
  factor = math.ceil(phase.seq_len / max(seen) * 1000) / 1000  # (rounded up: it must cover seq_len)
  return (f"note: phase {phase.name}'s seq_len {phase.seq_len} at rope x{phase.rope_scaling_factor:g} reaches "
          f"position {phase.seq_len / phase.rope_scaling_factor:g} before interpolation, past the {max(seen):g} the "
          f"model has been trained at (config.model.max_position_embeddings of the checkpoint it starts from, and "
          f"the earlier phases): those positions are new to it; to interpolate instead, set "
          f"config.phases.{phase.name}.rope_scaling_factor={factor:g}")


def check_batch(phase: Phase, micro_steps: int, batch_devices: int) -> None:
  """Every micro-batch must split evenly over the data x fsdp devices."""
  if phase.global_batch % micro_steps or (phase.global_batch // micro_steps) % batch_devices:
    raise ValueError(f"phase {phase.name}: global batch {phase.global_batch} / train.micro_steps={micro_steps} "
                     f"must be a multiple of the data x fsdp devices ({batch_devices})")
