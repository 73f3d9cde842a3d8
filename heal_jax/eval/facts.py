"""Deterministic, rule-based extraction of atomic clinical facts from notes and conversations.

No model and no network: regular expressions, fixed word lists (`heal_jax.eval.lexicon`) and the Porter stemmer
(from `nltk`, which `rouge-score` depends on). Everything here is a pure function of the text.

How a text becomes facts
1. Units. A note is split into sentences at `.`/`!`/`?` followed by whitespace, at newlines and at bullets;
   leading list markers (`1.`, `2)`) and upper-case section-header lines ("HISTORY OF PRESENT ILLNESS",
   "CC:") are dropped. A conversation is split into turns at speaker tags
   (`[doctor]`, `Patient:`, ...); each turn is split into sentences the same way.
2. Clauses. A sentence is split at `,` or `;` followed by whitespace, at `/` between words, before but/
   however/although/though/whereas/except, and before a negation cue that follows content words ("shoulder
   pain | without radiation"). Each clause with at least one content term is one fact.
3. Normalisation of a clause, in order: lower case; `n't` -> ` not`, other clitics dropped; `non-X` -> `not X`;
   numeric dates `m/d/yy(yy)` -> `<month> <day> <yyyy>`; month names -> 3-letter forms; `1st`/`2nd` -> `1`/`2`;
   tokens are numbers (`7.3`, `120/80`), `%` (-> `percent`) or letter runs; spelled-out numbers -> digits
   ("twenty six" -> 26, "two thousand nine" -> 2009, "nineteen eighty four" -> 1984, ordinals after a month;
   not the pronoun "one" of "no one", "this one");
   multi-word phrases -> one canonical form (`lexicon.PHRASES`: "high blood pressure" -> hypertension, "twice a
   day" -> bid, "26 year old"/"age 26" -> `26 yo`, ...); single words -> canonical forms (`lexicon.WORDS`:
   abbreviations such as htn, etoh, sob; lay and adjective forms such as renal -> kidney; brand -> generic drug
   names).
4. Content terms: the normalised tokens minus stop words, dialogue fillers, note boilerplate ("patient",
   "reports", "complains", "history", ...), negation cues and gender words; words are Porter-stemmed, numbers
   kept as written; runs of spelled-out letters are joined ("m g" -> mg).
5. Attributes of a fact:
   - polarity: negated when the clause holds a negation cue (no, not, denies, without, negative, never, none,
     nor, neither, absent); a cue that opens its clause ("denies fevers, chills, or weight loss") carries over
     to the following clauses of the same sentence until a but/however/... clause or a clause with an
     affirming verb (has, reports, endorses, ...). Questions have no polarity, except in a conversation when
     the next turn opens with a yes/no word standing alone ("Any chest pain?" "No." -> negated "chest pain";
     "No cesarean, ..." is not such an answer; a yes or no to a negative question, one with no / not /
     never / none / nor / neither among its first four words ("No fever?" "Yes."), is ambiguous and sets
     none); that word is then dropped from the answer.
   - quantities: (value, unit, anchor) for every number (decades such as "80s" kept as ranges; "'92" ->
     1992): the unit is the canonical unit word that follows (mg, mcg, g, kg, lb, ml, percent, mmhg, day, week,
     month, year, yo (age), ...) or None; the anchor is the nearest content word within three tokens before it
     ("lisinopril 20 mg" -> lisinopril), or for a number without a unit the word right before it (or before
     of/is/was/at: "sodium 133", "rate of 122").
   - sides: (side, anchor terms) for left/right/bilateral followed within two tokens by a content word
     ("left lower extremity" -> left, {lower, extrem}); so "all right" and "right now" are not sides.
   - drugs: canonical drug names, from a list of common generic and brand names plus generic-name suffixes
     (-pril, -sartan, -olol, -statin, -prazole, -cillin, -mycin, ...).
   - gender: male or female when the clause has gender words of one kind only (he/his/male/man/mr... vs.
     she/her/female/woman/ms...); in a clause that names a relative only a possessive before the relative
     counts ("her son"). A note's gender is the majority over its words. A conversation's is the majority
     of the doctor's words of address in turns the patient (not a patient's guest) answers ("sir"; "ma'am",
     "madam", "Miss" as a title: "Miss Lee", "Hello, miss."); without any, of its descriptors (male,
     female, man, woman, mr, mrs, ms).
The matching of facts (coverage, support, contradiction) is in `heal_jax.eval.notes`.
"""

from __future__ import annotations

import dataclasses
import functools
import re

from nltk.stem import porter

from heal_jax.eval import lexicon


_AGE_BEFORE = re.compile(r"\b(?:age|aged) (?:of )?(\d+)\b")
_PER_DAY = re.compile(r"\b(\d+ [a-z]+) (?:a|per|each) day\b")
_SLASHED_REGEX = re.compile(r"\b(" + "|".join(re.escape(k) for k in lexicon.SLASHED) + r")(?![a-z])")
_TOKEN = re.compile(r"\d0s\b|\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|%|[a-z]+|[,;:()]")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\s*\n\s*|\s*[\u2022\u00b7\u25aa\u25cf]\s*")
_HEADER_LINE = re.compile(r"[A-Z][A-Z &/()-]{0,60}:?")  # "HISTORY OF PRESENT ILLNESS", "CC:", "PLAN"
_LIST_MARKER = re.compile(r"^\s*\(?\d{1,2}[.)](?!\d)\s*")
# Upper-case MR / MS / MRS without a period are abbreviations ("MR arthrogram", "MS diagnosed in 2010"),
# not the titles Mr. / Ms. / Mrs. that carry a gender.
_CAPS_ABBREVIATION = re.compile(r"\b(?:MRS|MR|MS)\b(?!\.)")
_CAPS_EXPANSION = {"MR": "mrabbrev", "MS": "msabbrev", "MRS": "mrsabbrev"}  # one neutral word each (MS: multiple
                                                                          # sclerosis, mental status, ...)
_LABEL = re.compile(r"^\s*([A-Za-z][A-Za-z&/-]*(?: [A-Za-z&/-]+){0,2}):\s+(?=\S)")  # "Label: " of 1-3 words
_CLAUSE_SPLIT = re.compile(r"[,;]\s+|(?<=[A-Za-z]{3})/(?=[A-Za-z]{3})|"
                           r"\s+(?=(?:but|however|although|though|whereas|except)\b)", re.IGNORECASE)
_DATE = re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4}|\d{2})\b")
_TURN = re.compile(r"^\s*(?:\[([^\]\n]{1,30})\]|([A-Za-z][A-Za-z_ ]{0,29}):)[ \t]*", re.MULTILINE)
_PHRASE_REGEX = re.compile(r"\b(" + "|".join(re.escape(p) for p in sorted(lexicon.PHRASES, key=len, reverse=True))
                           + r")\b")
_STEMMER = porter.PorterStemmer()
# "Miss" as a title: before a capitalised name ("Miss Lee"), or set off by a comma or a greeting and ending
# the phrase ("Hello, miss.", "Good morning miss?"); not the verb ("Did you miss?", "anything we miss, Jane").
_MISS_TITLE = re.compile(r"\bMiss\s+[A-Z][a-z]|(?i:(?:,|\b(?:hello|hi|hey|morning|afternoon|evening|thanks|"
                         r"welcome|sorry))\s*miss\s*(?=[,.!?]|$))")
# A turn that opens with a yes/no word standing alone ("No.", "Yeah, ...", "Um, nope"), not "No cesarean".
_ANSWER = re.compile(r"^\W*(?:(?:um|uh|uhm|oh|well|hmm|so)\W+)*(yes|yeah|yep|yup|sure|correct|right|definitely|"
                     r"absolutely|certainly|indeed|mm-?hmm|uh-?huh|mhm|no|nope|nah|never|none|negative)"
                     r"(?:\s*[,.!;]+\s*|\s*$)", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Fact:
  """One clause: its content terms and the atomic attributes checked for contradictions."""
  text: str
  terms: frozenset[str]
  negated: bool | None  # None: a question without an answer
  quantities: tuple[tuple[str, str | None, str | None], ...]  # (value, unit, anchor term)
  sides: tuple[tuple[frozenset[str], frozenset[str]], ...]  # (sides, anchor terms)
  drugs: frozenset[str]
  gender: str | None
  unit: int  # index of the sentence (note) or turn (conversation) it came from


@dataclasses.dataclass(frozen=True)
class Document:
  """Facts of one text, the content terms of each matching unit, and its gender."""
  facts: tuple[Fact, ...]
  units: tuple[frozenset[str], ...]
  gender: str | None


@functools.lru_cache(maxsize=65536)
def stem(word: str) -> str:
  """Porter stem of a word; numbers are returned unchanged."""
  if not word.isalpha() or len(word) <= 3:
    return word
  return _STEMMER.stem(word)


_STYLE_STEMS = frozenset(stem(w) for w in lexicon.STYLE_WORDS)
NORMAL_STEMS = frozenset(stem(w) for w in lexicon.NORMAL_FINDINGS)
_SUPPORT_MAP = {stem(k): frozenset(stem(w) for w in v) for k, v in lexicon.SUPPORT_SYNONYMS.items()}


def _support_form(terms: frozenset[str]) -> frozenset[str]:
  return frozenset().union(*(_SUPPORT_MAP.get(t, (t,)) for t in terms)) - _STYLE_STEMS if terms else terms


def _date(m: re.Match[str]) -> str:
  month, day, year = int(m.group(1)), int(m.group(2)), m.group(3)
  if not 1 <= month <= 12:
    return m.group(0)
  if len(year) == 2:
    year = ("20" if int(year) <= 30 else "19") + year
  return f"{lexicon.MONTHS[month - 1]} {day} {year}"


def _number_value(words: list[str]) -> list[int]:
  """Values of a run of number words: 'twenty six' -> [26], 'nineteen eighty four' -> [1984]."""
  if any(w in lexicon.SCALES for w in words):
    total, current = 0, 0
    for w in words:
      if w == "hundred":
        current = max(current, 1) * 100
      elif w == "thousand":
        total, current = total + max(current, 1) * 1000, 0
      else:
        current += lexicon.ONES.get(w, 0) + lexicon.TENS.get(w, 0)
    return [total + current]
  chunks: list[int] = []
  last_tens = False
  for w in words:  # a tens word absorbs the following one-digit word
    if (w in lexicon.ONES and chunks and chunks[-1] % 10 == 0 and chunks[-1] >= 20 and lexicon.ONES[w] < 10
        and last_tens):
      chunks[-1] += lexicon.ONES[w]
      last_tens = False
      continue
    chunks.append(lexicon.ONES.get(w, lexicon.TENS.get(w, 0)))
    last_tens = w in lexicon.TENS
  if len(chunks) == 2 and chunks[0] >= 10 and chunks[1] >= 10:
    return [chunks[0] * 100 + chunks[1]]  # years read in pairs
  return chunks


def _numbers(tokens: list[str]) -> list[str]:
  """Spelled-out numbers -> digits; ordinals only right after a month name."""
  out: list[str] = []
  i = 0
  while i < len(tokens):
    t = tokens[i]
    if out and out[-1] in lexicon.MONTHS and (t in lexicon.ORDINALS or (
        t in lexicon.TENS and i + 1 < len(tokens) and tokens[i + 1] in lexicon.ORDINALS)):
      if t in lexicon.TENS:
        out.append(str(lexicon.TENS[t] + lexicon.ORDINALS[tokens[i + 1]]))
        i += 2
      else:
        out.append(str(lexicon.ORDINALS[t]))
        i += 1
      continue
    nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
    if (t == "one" and out and out[-1] in lexicon.ONE_AS_PRONOUN_AFTER  # "no one", "this one": not 1
        and nxt not in lexicon.UNITS and nxt not in lexicon.ONES and nxt not in lexicon.TENS
        and nxt not in lexicon.SCALES):  # but "the one tablet", "no one hundred"
      out.append(t)
      i += 1
      continue
    if t in lexicon.ONES or t in lexicon.TENS:
      j = i
      while j < len(tokens) and (
          tokens[j] in lexicon.ONES or tokens[j] in lexicon.TENS or tokens[j] in lexicon.SCALES or (
          tokens[j] == "and" and j > i and tokens[j - 1] in lexicon.SCALES and j + 1 < len(tokens)
          and (tokens[j + 1] in lexicon.ONES or tokens[j + 1] in lexicon.TENS))):
        j += 1
      out.extend(str(v) for v in _number_value([w for w in tokens[i:j] if w != "and"]))
      i = j
      continue
    out.append(t)
    i += 1
  return out


def _join_letters(tokens: list[str]) -> list[str]:
  """Runs of spelled-out single letters become one word ("m g" -> mg, "a b c" -> abc)."""
  out: list[str] = []
  run: list[str] = []
  for t in tokens + [""]:
    if len(t) == 1 and t.isalpha():
      run.append(t)
      continue
    out.extend(["".join(run)] if len(run) >= 2 else run)
    run = []
    if t:
      out.append(t)
  return out


def _canonical_number(token: str) -> str:
  if re.fullmatch(r"\d+\.\d+", token):
    return token.rstrip("0").rstrip(".")
  return token


def normalize(text: str) -> list[str]:
  """Canonical tokens of a clause (step 3 of the module docstring)."""
  text = _CAPS_ABBREVIATION.sub(lambda m: _CAPS_EXPANSION[m.group(0)], text).lower().replace("\u2019", "'")
  text = re.sub(r"\bma'am\b", "madam", text)
  text = re.sub(r"won't", "will not", text)
  text = re.sub(r"can't", "can not", text)
  text = re.sub(r"n't\b", " not", text)
  text = re.sub(r"'(s|re|ve|ll|d|m)\b", "", text)
  text = re.sub(r"\bnon-(?=[a-z])", "not ", text)
  text = _SLASHED_REGEX.sub(lambda m: f" {lexicon.SLASHED[m.group(1)]} ", text)
  text = re.sub(r"\b(?:[a-z]\.){2,}", lambda m: m.group(0).replace(".", ""), text)
  text = _DATE.sub(_date, text)
  text = re.sub(r"'(\d\d)\b", lambda m: ("20" if int(m.group(1)) <= 30 else "19") + m.group(1), text)
  text = re.sub(r"\b(\d+)(st|nd|rd|th)\b", r"\1", text)
  tokens = ["percent" if t == "%" else lexicon.MONTH_WORDS.get(t, t) for t in _join_letters(_TOKEN.findall(text))]
  tokens = [_canonical_number(t) for t in _numbers(tokens) if t not in ",;:()"]
  joined = _PHRASE_REGEX.sub(lambda m: lexicon.PHRASES[m.group(1)], " ".join(tokens))
  joined = _PER_DAY.sub(r"\1 daily", _AGE_BEFORE.sub(r"\1 yo", joined))
  out: list[str] = []
  for t in joined.split():
    out.extend(lexicon.WORDS.get(t, t).split())
  return [lexicon.BRANDS.get(t, t) for t in out]


def is_drug(token: str) -> bool:
  """Whether a canonical token names a drug (list or generic-name suffix)."""
  if token in lexicon.GENERICS or token in lexicon.BRANDS.values():
    return True
  return len(token) >= 6 and token not in lexicon.NOT_DRUGS and token.endswith(lexicon.DRUG_SUFFIXES)


def content_terms(tokens: list[str]) -> frozenset[str]:
  """Stemmed content terms of canonical tokens."""
  return frozenset(stem(t) for t in tokens if t not in lexicon.STOPWORDS and t not in lexicon.NEGATION_CUES
                   and t not in lexicon.MALE and t not in lexicon.FEMALE and (len(t) > 1 or t.isdigit()))


def support_terms(fact: Fact) -> Fact:
  """`fact` as checked against a source: without note-style terms (`lexicon.STYLE_WORDS`), synonyms mapped
  (`lexicon.SUPPORT_SYNONYMS`)."""
  return dataclasses.replace(fact, terms=_support_form(fact.terms))


def support_units(units: tuple[frozenset[str], ...]) -> tuple[frozenset[str], ...]:
  """Matching units in the form `support_terms` gives facts."""
  return tuple(_support_form(u) for u in units)


def _is_content(t: str) -> bool:
  return (t not in lexicon.STOPWORDS and t not in lexicon.NEGATION_CUES and not t[0].isdigit()
          and t not in lexicon.UNITS)


def _quantities(tokens: list[str]) -> tuple[tuple[str, str | None, str | None], ...]:
  out = []
  for i, t in enumerate(tokens):
    if not t[0].isdigit():
      continue
    unit = lexicon.UNITS.get(tokens[i + 1]) if i + 1 < len(tokens) else None
    window = 3 if unit else 2 if i >= 2 and tokens[i - 1] in lexicon.LINKS else 1
    anchor = next((stem(tokens[j]) for j in range(i - 1, max(i - 1 - window, -1), -1) if _is_content(tokens[j])),
                  None)
    out.append((t, unit, anchor))
  return tuple(out)


def _sides(tokens: list[str]) -> tuple[tuple[frozenset[str], frozenset[str]], ...]:
  out = []
  for i, t in enumerate(tokens):
    if t in lexicon.SIDE_WORDS:
      anchor = frozenset(stem(w) for w in tokens[i + 1:i + 3] if _is_content(w) and w not in lexicon.SIDE_WORDS)
      if anchor:
        out.append((lexicon.SIDE_WORDS[t], anchor))
  return tuple(out)


def _gender(tokens: list[str]) -> str | None:
  """Patient gender a clause states; words after a relative ("mother ... her") describe the relative."""
  relative = next((i for i, t in enumerate(tokens) if t in lexicon.RELATIVES), len(tokens))
  found = ({"male" for t in tokens[:relative] if t in lexicon.MALE}
           | {"female" for t in tokens[:relative] if t in lexicon.FEMALE})
  return found.pop() if len(found) == 1 else None


def _majority_gender(tokens: list[str], male: frozenset[str], female: frozenset[str]) -> str | None:
  n_male, n_female = sum(t in male for t in tokens), sum(t in female for t in tokens)
  if n_male == n_female:
    return None
  return "male" if n_male > n_female else "female"


def sentences(text: str) -> list[str]:
  """Sentences of a note (step 1); list markers, section-header lines and empty sentences dropped."""
  out = []
  for s in _SENTENCE_SPLIT.split(text):
    s = _LIST_MARKER.sub("", s).strip()
    header = _HEADER_LINE.fullmatch(s) and (s.endswith(":") or " " in s or s.lower() in lexicon.SECTION_WORDS)
    if s and re.search(r"[A-Za-z0-9]", s) and not header:
      out.append(s)
  return out


def _split_at_negation(tokens: list[str], label: int = 0) -> list[list[str]]:
  """Splits before a negation cue that follows content words ("pain without radiation"); the first
  `label` tokens (a "Constitutional:" label) stay with what follows them."""
  parts, start = [], 0
  for i, t in enumerate(tokens):
    if (t in lexicon.NEGATION_CUES and i > label
        and any(_is_content(x) or x[0].isdigit() for x in tokens[max(start, label):i])):
      parts.append(tokens[start:i])
      start = i
  return parts + [tokens[start:]]


def _sentence_facts(sentence: str, unit: int, polarity: bool | None = None) -> list[Fact]:
  """Facts of one sentence; `polarity` overrides negation detection (answered questions)."""
  facts, carried = [], False
  question = sentence.rstrip().endswith("?")
  negative_question = polarity is not None and any(  # "No fever?", "You don't smoke?": not "... without X?"
      t in lexicon.NEGATIVE_QUESTION_CUES for t in normalize(sentence)[:4])
  for k, clause in enumerate(_CLAUSE_SPLIT.split(sentence)):
    label_match = _LABEL.match(clause) if k == 0 else None  # "Constitutional: Denies fever"
    label_tokens = normalize(label_match.group(1)) if label_match else []
    label = len(label_tokens) if not any(t in lexicon.NEGATION_CUES for t in label_tokens) else 0
    for n, tokens in enumerate(_split_at_negation(normalize(clause), label)):
      terms = content_terms(tokens)
      if not terms:
        continue
      if tokens[0] in lexicon.TERMINATORS or any(t in lexicon.AFFIRMING for t in tokens):
        carried = False
      skip = label if n == 0 else 0
      cue = next((i for i, t in enumerate(tokens) if t in lexicon.NEGATION_CUES), None)
      negated = carried or cue is not None
      if cue is not None:  # only a leading cue ("denies X, Y"; after a label) carries over to the next clauses
        carried = not any(_is_content(t) for t in tokens[skip:cue])
      if polarity is not None:  # a yes or no to a negative question ("No fever?" "Yes.") is ambiguous
        negated = None if negative_question else not polarity
      elif question:
        negated = None
      facts.append(Fact(clause.strip(), terms, negated, _quantities(tokens), _sides(tokens),
                        frozenset(t for t in tokens if is_drug(t)), _gender(tokens), unit))
  return facts


def note_facts(text: str) -> Document:
  """Facts of a note; its matching units are its sentences."""
  facts, units = [], []
  for i, s in enumerate(sentences(text)):
    facts.extend(_sentence_facts(s, i))
    units.append(content_terms(normalize(s)))
  tokens = normalize(text)
  return Document(tuple(facts), tuple(units), _majority_gender(tokens, lexicon.MALE, lexicon.FEMALE))


def turns(text: str) -> list[tuple[str, str]]:
  """(speaker, text) turns of a conversation; text before the first tag is one untagged turn."""
  marks = list(_TURN.finditer(text))
  if not marks:
    return [("", text)] if text.strip() else []
  out = [("", text[:marks[0].start()])] if text[:marks[0].start()].strip() else []
  for m, nxt in zip(marks, marks[1:] + [None]):
    speaker = (m.group(1) or m.group(2)).strip().lower()
    out.append((speaker, text[m.end():nxt.start() if nxt else len(text)].strip()))
  return out


def _answer(text: str) -> bool | None:
  """True/False when a turn opens with a yes/no word standing alone (after fillers), else None."""
  m = _ANSWER.match(text)
  return None if m is None else m.group(1).lower() not in lexicon.NO_WORDS


def _strip_answer_word(text: str) -> str:
  return _ANSWER.sub("", text)


def _addressed(parsed: list[tuple[str, str]]) -> list[str]:
  """Words by which a doctor addresses the patient ("sir", "ma'am", "Miss" as a title) in doctor turns that
  the patient answers (not a parent who brought a child)."""
  out = []
  for (speaker, turn), (nxt, _) in zip(parsed, parsed[1:]):
    if ("doctor" in speaker or "clinician" in speaker) and "patient" in nxt and "guest" not in nxt:
      turn = _MISS_TITLE.sub(" madam ", turn)
      out.extend(t for t in normalize(turn) if t in lexicon.MALE_ADDRESS or t in lexicon.FEMALE_ADDRESS)
  return out


def conversation_facts(text: str) -> Document:
  """Facts of a conversation; a matching unit is a turn together with the two turns before it."""
  parsed = turns(text)
  facts: list[Fact] = []
  unit_terms: list[frozenset[str]] = []
  for i, (_, turn) in enumerate(parsed):
    answer = _answer(parsed[i + 1][1]) if i + 1 < len(parsed) else None
    if i > 0 and _answer(turn) is not None:
      turn = _strip_answer_word(turn)
    sents = sentences(turn)
    for j, s in enumerate(sents):
      is_last_question = s.endswith("?") and not any(x.endswith("?") for x in sents[j + 1:])
      facts.extend(_sentence_facts(s, i, answer if is_last_question else None))
    unit_terms.append(content_terms(normalize(turn)))
  units = tuple(frozenset().union(*unit_terms[max(i - 2, 0):i + 1]) for i in range(len(unit_terms)))
  gender = (_majority_gender(_addressed(parsed), lexicon.MALE_ADDRESS, lexicon.FEMALE_ADDRESS)
            or _majority_gender(normalize(text), lexicon.MALE_DESCRIPTORS, lexicon.FEMALE_DESCRIPTORS))
  return Document(tuple(facts), units, gender)
