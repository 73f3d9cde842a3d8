"""Prompt templates shared by instruction tuning and generation (the one place they are written)."""

from __future__ import annotations

import re

NOTE_SECTIONS = ("CHIEF COMPLAINT", "HISTORY OF PRESENT ILLNESS", "REVIEW OF SYSTEMS", "PHYSICAL EXAM",
                 "RESULTS", "ASSESSMENT AND PLAN")
EXPLANATION_MARKER = "\n\nExplanation: "
_INSTRUCTION = "### Instruction:\n{prompt}\n\n### Response:\n"
_BRACKETED = re.compile(r"^\[([^\]\s]+)\]\s*(.*)$")
# Speaker labels of the datasets only (Gest_ is a typo in MTS-Dialog), so that a continuation line
# such as "BP: 120/80." or "Family: mother had diabetes." is not taken for a new speaker.
_COLON = re.compile(r"^(doctor|patient|(?:guest|gest)_[a-z]+|[a-z]+_guest)\s*:\s*(.*)$", re.IGNORECASE)


def normalize_conversation(text: str) -> str:
  """`[speaker] text` lines (speaker lower-cased) of a conversation given as `[doctor] ...` lines
  (any bracketed speaker) or as `Doctor: ...` / `Patient: ...` lines (with MTS-Dialog's `Guest_...:`
  and `..._guest:` speakers). A line without a speaker continues the turn above; blank lines are
  dropped. Training (`training_conversation`) and generation show conversations to the model this way.

  Raises ValueError when the first non-blank line has no speaker, no turn is found or every turn is
  empty.
  """
  turns: list[list[str]] = []
  for n, line in enumerate(text.removeprefix("\ufeff").splitlines(), 1):
    line = line.strip()
    if not line:
      continue
    match = _BRACKETED.match(line) or _COLON.match(line)
    if match:
      turns.append([match.group(1).lower(), match.group(2).strip()])
    elif turns:
      turns[-1][1] = f"{turns[-1][1]} {line}".strip()
    else:
      raise ValueError(f"line {n} is not a turn: expected '[speaker] ...' (any speaker in brackets) or 'Doctor: ...', "
                       f"'Patient: ...', 'Guest_family: ...', 'Family_guest: ...' (the only colon labels read: "
                       f"'BP: 120/80' is text), got {line[:60]!r}")
  if not turns:
    raise ValueError("no conversation turns found (the text is empty)")
  if not any(said for _, said in turns):
    raise ValueError(f"all {len(turns)} turns are empty: no conversation text")
  return "\n".join(f"[{speaker}] {said}".rstrip() for speaker, said in turns)


def training_conversation(text: str) -> str:
  """A conversation as a note-writing example shows it: its normalised turns, as generation shows a
  conversation to the model; text without speaker turns stays as it is (stripped), so no record is lost."""
  try:
    return normalize_conversation(text)
  except ValueError:
    return text.strip()


def note_prompt(conversation: str) -> str:
  """The instruction asking for the clinical note of a `[doctor]`/`[patient]` conversation.

  For generation, the model input is `format_instruction(note_prompt(conversation))[0]`.
  """
  return ("Write the clinical note for the following doctor-patient conversation, with the sections "
          f"{', '.join(NOTE_SECTIONS)}. State only facts supported by the conversation.\n\n"
          f"Conversation:\n{conversation.strip()}")


def format_instruction(prompt: str, response: str = "",
                       explanation: str | None = None) -> tuple[str, str]:
  """(prompt_text, response_text) of one instruction example; the loss covers response_text only.

  prompt_text ends with "### Response:\n", so the two concatenate to the full training text; the
  explanation, when given and non-blank, follows the answer after `EXPLANATION_MARKER`.
  """
  prompt_text = _INSTRUCTION.format(prompt=prompt.strip())
  response_text = response.strip()
  if explanation and explanation.strip():
    response_text += EXPLANATION_MARKER + explanation.strip()
  return prompt_text, response_text


def split_response(response_text: str) -> tuple[str, str | None]:
  """Inverse of the response side of `format_instruction`: (answer, explanation or None)."""
  answer, marker, explanation = response_text.partition(EXPLANATION_MARKER)
  return answer.strip(), (explanation.strip() if marker else None)
