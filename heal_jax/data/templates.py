"""Prompt templates shared by instruction tuning and generation (the one place they are written)."""

from __future__ import annotations

NOTE_SECTIONS = ("CHIEF COMPLAINT", "HISTORY OF PRESENT ILLNESS", "REVIEW OF SYSTEMS", "PHYSICAL EXAM",
                 "RESULTS", "ASSESSMENT AND PLAN")
EXPLANATION_MARKER = "\n\nExplanation: "
_INSTRUCTION = "### Instruction:\n{prompt}\n\n### Response:\n"


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
