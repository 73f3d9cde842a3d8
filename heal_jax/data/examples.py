"""Records -> (prompt, target) texts -> token ids with a loss mask: the one place this is decided.

Every training example is a pair of texts. Documents have an empty prompt (the loss covers all of
their tokens); conversation+note pairs become the note-writing instruction; instructions are
formatted with `templates.format_instruction` (the loss covers the response and explanation only).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from heal_jax.data import templates

# What `texts` makes of records. Data states and prepared data record it: tokens of another format
# are other examples. Conversations became normalised [speaker] turns on 2026-11-27 (as generation
# shows them; `Doctor:` lines were trained as written, served as `[doctor]`).
TEXT_FORMAT = "conversation turns normalised (2026-11-27)"


def texts(record: Mapping[str, str | None], kind: str) -> tuple[str, str]:
  """(prompt_text, target_text) of a validated record of `kind` (see data.check.KIND_FIELDS)."""
  if kind == "document":
    return "", record["text"]
  if kind == "conversation":
    conversation = templates.training_conversation(record["conversation"])
    return templates.format_instruction(templates.note_prompt(conversation), record["note"])
  if kind == "instruction":
    return templates.format_instruction(record["prompt"], record["response"], record.get("explanation"))
  raise ValueError(f"unknown record kind {kind!r}")


def encode(tokenizer, prompt_text: str, target_text: str) -> tuple[np.ndarray, np.ndarray]:
  """tokens_N int32 = [BOS] prompt target [EOS], loss_mask_N int32 (1 where the token is a target).

  The pair is encoded as one string and split at the first token that starts after the prompt's
  text, so the target's first token is the one the model sees after the prompt at generation time
  (no spurious word-start piece).
  BOS is never a target; EOS is, so the model learns to stop.
  """
  text = prompt_text + target_text
  ids = tokenizer.encode(text, add_bos=True, add_eos=True)
  ids = np.fromiter(ids, np.int32, len(ids))
  boundary = 1
  if prompt_text:
    # Where the prompt's bytes end in the joint encoding (no second encode); for a model whose pieces
    # do not account for the text byte for byte, the length of the prompt encoded alone.
    split = tokenizer.split_point(ids[1:-1], text, prompt_text)
    boundary = 1 + split if split is not None else len(tokenizer.encode(prompt_text, add_bos=True))
    boundary = min(boundary, len(ids) - 1)
  mask = np.zeros(len(ids), np.int32)
  mask[boundary:] = 1
  return ids, mask
