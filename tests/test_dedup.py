"""dedup: normalisation, exact and MinHash/LSH near duplicates, determinism, the synthetic corpus survives."""

import json

import numpy as np
import pytest

from heal_jax.data import dedup, synthetic

DOC = ("The patient is a 54 year old man with type 2 diabetes and hypertension who presents with three days "
       "of productive cough, fever to 101 degrees, and shortness of breath on exertion. He denies chest pain, "
       "hemoptysis and leg swelling. On exam his oxygen saturation is 93 percent on room air with crackles at "
       "the right base. A chest radiograph shows a right lower lobe infiltrate. We will start oral amoxicillin "
       "and azithromycin, check a basic metabolic panel, and see him again in one week or sooner if his "
       "breathing gets worse. He was told to keep taking metformin and lisinopril at the same doses.")
OTHER = ("A retired teacher walks her dog along the river every morning before the markets open. The bakery on "
         "the corner sells rye bread and small almond cakes, and the owner remembers every customer by name. "
         "In autumn the leaves turn orange and the paths fill with students on bicycles heading to class.")


def _jaccard(a: str, b: str, k: int = 5) -> float:
  sa = set(dedup.shingle_hashes(dedup.dedup_key(a), k).tolist())
  sb = set(dedup.shingle_hashes(dedup.dedup_key(b), k).tolist())
  return len(sa & sb) / len(sa | sb)


def test_normalisation():
  composed, decomposed = "caf\u00e9", "cafe\u0301"
  assert composed != decomposed and dedup.normalize_text(decomposed) == composed
  assert dedup.normalize_text("m\u00b2 \ufb01le") == "m\u00b2 \ufb01le"  # NFC keeps compatibility forms
  assert dedup.dedup_key("  The \ufb01le\n\tIS  m\u00b2 ") == "the file is m2"
  assert dedup.dedup_key("\uff11\uff12 Cafe\u0301") == dedup.dedup_key("12 caf\u00e9")


def test_exact_duplicates_up_to_case_space_and_unicode():
  d = dedup.Deduplicator()
  assert d.add(DOC).keep
  assert d.add(OTHER).keep
  again = d.add("  " + DOC.upper().replace(" ", "  \n"))
  assert again == dedup.Decision(False, "exact", 0, 1.0)
  assert d.counts == {"seen": 3, "kept": 2, "exact": 1, "near": 0}


def test_near_duplicate_with_a_few_words_changed():
  words = DOC.split()
  changed = list(words)
  changed[20], changed[70] = "seven", "left"  # 2 of 102 words
  near = " ".join(changed)
  assert _jaccard(DOC, near) > 0.8
  d = dedup.Deduplicator()
  assert d.add(DOC).keep and d.add(OTHER).keep
  decision = d.add(near)
  assert (decision.keep, decision.reason, decision.duplicate_of) == (False, "near", 0)
  assert abs(decision.similarity - _jaccard(DOC, near)) < 0.12
  # A document that shares a sentence but is mostly different is kept.
  mixed = OTHER + " " + " ".join(words[:20])
  assert _jaccard(OTHER, mixed) < 0.8
  assert d.add(mixed).keep
  assert d.counts == {"seen": 4, "kept": 3, "exact": 0, "near": 1}


def test_switches_and_validation():
  d = dedup.Deduplicator(exact=False, near=False)
  assert d.add(DOC).keep and d.add(DOC).keep
  d = dedup.Deduplicator(exact=False)
  assert d.add(DOC).keep and d.add(DOC).reason == "near"
  with pytest.raises(ValueError, match="num_perm"):
    dedup.Deduplicator(num_perm=100, bands=16)
  with pytest.raises(ValueError, match="threshold"):
    dedup.Deduplicator(threshold=0.0)


def test_signature_estimates_jaccard_and_is_seeded():
  rng = np.random.default_rng(0)
  vocab = [f"w{i}" for i in range(400)]
  a = " ".join(rng.choice(vocab, 300))
  b = " ".join(a.split()[:200] + list(rng.choice(vocab, 100)))
  hasher = dedup.MinHasher(512, seed=3)
  sa = hasher.signature(dedup.shingle_hashes(a, 5))
  sb = hasher.signature(dedup.shingle_hashes(b, 5))
  assert sa.dtype == np.uint32 and sa.shape == (512,)
  assert abs(float((sa == sb).mean()) - _jaccard(a, b)) < 0.06
  assert np.array_equal(sa, dedup.MinHasher(512, seed=3).signature(dedup.shingle_hashes(a, 5)))
  assert not np.array_equal(sa, dedup.MinHasher(512, seed=4).signature(dedup.shingle_hashes(a, 5)))
  assert len(dedup.shingle_hashes("two words", 5)) == 1 and len(dedup.shingle_hashes("", 5)) == 0
  assert dedup.candidate_probability(0.8, 16, 8) == pytest.approx(0.947, abs=1e-3)


def test_synthetic_corpus_is_not_collapsed(tmp_path):
  """Distinct templated synthetic documents survive the default threshold; the few dropped are true
  near-copies (the same template sentences, reordered or with one slot changed)."""
  files = synthetic.generate_corpus(tmp_path, seed=0, sizes={"general": 1500, "medical": 300, "clinical": 150,
                                                             "instructions": 300})
  for tier, path in files.items():
    texts = ["\n\n".join(v for v in json.loads(line).values() if v) for line in path.open(encoding="utf-8")]
    d = dedup.Deduplicator()
    decisions = [d.add(t) for t in texts]
    dropped = [(i, x) for i, x in enumerate(decisions) if not x.keep]
    if tier == "general":
      assert len(dropped) <= 0.01 * len(texts), (tier, d.counts)
      for i, x in dropped:
        assert _jaccard(texts[i], texts[x.duplicate_of]) >= 0.7, (texts[i], texts[x.duplicate_of])
    else:
      assert not dropped, (tier, d.counts)
    again = dedup.Deduplicator()
    assert [again.add(t) for t in texts] == decisions
