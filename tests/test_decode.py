"""KV-cache decoding against full forward passes, sampling, stopping, and `heal-jax generate`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heal_jax.checkpoint import hf_mapping, random_init, restore
from heal_jax.data import templates, tokenizer as tokenizer_lib
from heal_jax.infer import decode, generate, sampling as sampling_lib
from heal_jax.model import llama
from heal_jax.parallel import mesh as mesh_lib
from tests.test_ngram_draft import reference_draft

NEW = 8


@pytest.fixture(scope="module")
def checkpoint(note_checkpoint):
  return note_checkpoint


@pytest.fixture(scope="module")
def model(checkpoint):
  """(cfg, unscanned params) of the checkpoint, embedding sharpened so greedy picks are not near-ties."""
  loaded = restore.load_model(checkpoint)
  params = jax.tree.map(jnp.asarray, loaded.params)
  params["embed"]["embedding"] = params["embed"]["embedding"] * 8
  return loaded.cfg, params


@pytest.fixture(scope="module")
def prompts(model):
  rng = np.random.RandomState(0)
  return [[1] + [int(t) for t in rng.randint(3, model[0].vocab_size, n)] for n in (4, 16, 8)]


@pytest.fixture(scope="module")
def greedy_fn(model):
  return decode.make_generate_fn(model[0], NEW)


def _scanned(cfg, params):
  return cfg.replace(scan_layers=True), hf_mapping.stack_layers(params, cfg.num_layers)


def _greedy_by_full_forward(cfg, params, prompts, n, limit=None):
  """Greedy continuations recomputing each whole sequence every step (right-padded to one shape),
  picking among ids below `limit` (all when None)."""
  forward = jax.jit(lambda p, t: llama.Llama(cfg).apply({"params": p}, t))
  out = []
  for prompt in prompts:
    seq = list(prompt)
    for _ in range(n):
      buf = np.zeros((1, 32), np.int32)
      buf[0, :len(seq)] = seq
      seq.append(int(np.argmax(forward(params, jnp.asarray(buf))[0, len(seq) - 1, :limit])))
    out.append(seq[len(prompt):])
  return out


def test_cached_logits_match_full_forward_with_left_padding(model):
  cfg, p = model
  apply = jax.jit(llama.Llama(cfg).apply, static_argnames="last_only")
  rng = np.random.RandomState(1)
  seqs = [rng.randint(3, cfg.vocab_size, n) for n in (6, 11)]  # the last 3 tokens are decoded
  tokens_BxP, pad_B = decode.left_pad([s[:-3] for s in seqs], pad_multiple=4)
  b, plen = tokens_BxP.shape
  seg_BxS = jnp.asarray((np.arange(plen + 3)[None] >= pad_B[:, None]).astype(np.int32))
  positions_BxS = jnp.asarray(np.maximum(np.arange(plen + 3)[None] - pad_B[:, None], 0))
  logits, cache = apply({"params": p}, jnp.asarray(tokens_BxP), seg_BxS[:, :plen],
                        positions_BxS[:, :plen], cache=llama.init_cache(cfg, b, plen + 3),
                        cache_index=0, cache_segment_ids_BxS=seg_BxS)
  steps = [logits]
  for t in range(3):
    token_Bx1 = jnp.asarray([[s[len(s) - 3 + t]] for s in seqs])
    logits, cache = apply({"params": p}, token_Bx1, None, positions_BxS[:, plen + t:plen + t + 1],
                          cache=cache, cache_index=plen + t, cache_segment_ids_BxS=seg_BxS)
    steps.append(logits)
  cached = np.concatenate([np.asarray(s) for s in steps], axis=1)
  # Reference: the same left-padded rows in one plain forward pass (packed-style segment masking).
  full_tokens = np.concatenate([tokens_BxP, np.stack([s[-3:] for s in seqs])], axis=1)
  full = np.asarray(apply({"params": p}, jnp.asarray(full_tokens), seg_BxS, positions_BxS))
  for row, s in enumerate(seqs):
    np.testing.assert_allclose(cached[row, pad_B[row]:], full[row, pad_B[row]:], atol=1e-5, rtol=0)
  # and the padded rows agree with each sequence alone where every row is real.
  alone = np.asarray(apply({"params": p}, jnp.asarray(seqs[1][None])))[0]
  np.testing.assert_allclose(cached[1, pad_B[1]:], alone, atol=1e-5, rtol=0)
  assert jax.tree.map(jnp.shape, cache) == jax.tree.map(jnp.shape, llama.init_cache(cfg, b, plen + 3))


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_rows_write_the_cache_at_their_own_slots(model, scan):
  """A per-row cache_index (speculative decoding): after a 4-token prefill both rows write 2 tokens at
  slot 4; row 0 keeps both, row 1 only the first, so the next step writes 3 tokens at slots [6, 5]
  (row 1 over its rejected token). Its logits equal a plain forward pass of each row's kept tokens."""
  cfg, p = _scanned(*model) if scan else model
  apply = jax.jit(llama.Llama(cfg).apply)
  rng = np.random.RandomState(3)
  prefix_Bx4, first_Bx2, second_Bx3 = (rng.randint(3, cfg.vocab_size, (2, n)).astype(np.int32) for n in (4, 2, 3))
  seg_BxS = jnp.ones((2, 10), jnp.int32)
  cache = llama.init_cache(cfg, 2, 10)
  _, cache = apply({"params": p}, prefix_Bx4, cache=cache, cache_index=0, cache_segment_ids_BxS=seg_BxS)
  _, cache = apply({"params": p}, first_Bx2, None, jnp.asarray([[4, 5], [4, 5]]), cache=cache,
                   cache_index=jnp.asarray([4, 4]), cache_segment_ids_BxS=seg_BxS)
  logits_Bx3xV, _ = apply({"params": p}, second_Bx3, None, jnp.asarray([[6, 7, 8], [5, 6, 7]]), cache=cache,
                          cache_index=jnp.asarray([6, 5]), cache_segment_ids_BxS=seg_BxS)
  for row, kept in enumerate((2, 1)):
    tokens = np.concatenate([prefix_Bx4[row], first_Bx2[row, :kept], second_Bx3[row]])[None]
    np.testing.assert_allclose(logits_Bx3xV[row], apply({"params": p}, tokens)[0, -3:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_greedy_kv_decoding_equals_full_recompute(model, prompts, greedy_fn, scan):
  cfg, p = model
  if scan:
    got = decode.generate(*_scanned(cfg, p), prompts, max_new_tokens=NEW, pad_multiple=8)
  else:
    got = decode.run(greedy_fn, p, prompts, pad_multiple=8)
  assert got == _greedy_by_full_forward(cfg, p, prompts, NEW)
  assert len({tuple(g) for g in got}) == len(got)


def test_each_row_stops_at_the_context_whatever_its_batch(model, prompts):
  """With max_positions, a row gets max_positions - len(prompt) new tokens: a short prompt beside a
  long one is not cut to the long one's room (prompts of 5, 17 and 9 tokens, 20 positions: 15, 3, 11)."""
  cfg, p = model
  fn = decode.make_generate_fn(cfg, 16, max_positions=20)
  got = decode.run(fn, p, prompts)  # the program's own max_positions cuts each row
  assert fn.max_positions == 20
  assert [len(g) for g in got] == [15, 3, 11]
  tokens_BxP, pad_B = decode.left_pad(prompts)
  assert int(fn(p, tokens_BxP, pad_B, jax.random.PRNGKey(0))[1]) == 15  # the loop ends with the roomiest row
  for prompt, tokens in zip(prompts, got):
    assert tokens == _greedy_by_full_forward(cfg, p, [prompt], 20 - len(prompt))[0]


def test_vocab_limit_keeps_ids_the_tokenizer_lacks_out(model, prompts):
  """The last 2 x 16 ids get lm_head columns of +-1000 along each hidden unit: unlimited greedy
  decoding picks them every step; limited to the ids below them it equals the full-forward argmax
  over the allowed ids."""
  cfg, p = model
  limit = cfg.vocab_size - 2 * 16
  head = np.array(p["lm_head"]["kernel"])
  eye = np.eye(cfg.hidden_size, 16, dtype=head.dtype) * 1000
  head[:, limit:] = np.concatenate([eye, -eye], axis=1)
  padded = {**p, "lm_head": {"kernel": jnp.asarray(head)}}
  free = decode.run(decode.make_generate_fn(cfg, NEW), padded, prompts)
  assert all(t >= limit for row in free for t in row)
  limited = decode.run(decode.make_generate_fn(cfg, NEW, vocab_limit=limit), padded, prompts)
  assert limited == _greedy_by_full_forward(cfg, padded, prompts, NEW, limit=limit)
  assert decode.run(decode.make_generate_fn(cfg, NEW, vocab_limit=limit, lookahead=3), padded, prompts) == limited
  with pytest.raises(ValueError, match="vocab_limit"):
    decode.make_generate_fn(cfg, NEW, vocab_limit=cfg.vocab_size + 1)


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(checkpoint, tmp_path):
  from heal_jax.checkpoint.errors import CheckpointError  # pylint: disable=import-outside-toplevel
  from heal_jax.checkpoint import params_store  # pylint: disable=import-outside-toplevel
  cfg = restore.load_model(checkpoint).cfg.replace(vocab_size=256)
  with pytest.raises(CheckpointError, match=r"has \d+ pieces but the model's vocabulary is 256"):  # refused at init
    random_init.write_random_checkpoint(cfg, tmp_path / "small", seed=0, tokenizer_dir=checkpoint / "tokenizer")
  random_init.write_random_checkpoint(cfg, tmp_path / "small", seed=0)
  params_store.copy_tokenizer(checkpoint / "tokenizer", tmp_path / "small" / "tokenizer")  # and at load
  with pytest.raises(CheckpointError, match=r"tokenizer.model has \d+ pieces but the model's vocabulary is 256"):
    restore.load_model(tmp_path / "small")
  (checkpoint / "tokenizer" / "tokenizer_config.json").rename(tmp_path / "saved.json")
  try:
    (checkpoint / "tokenizer" / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer_config.json: cannot be read as JSON"):
      restore.load_model(checkpoint)
  finally:
    (tmp_path / "saved.json").replace(checkpoint / "tokenizer" / "tokenizer_config.json")


def test_sampling_is_reproducible_and_top_k_1_is_greedy(model, prompts, greedy_fn):
  cfg, p = model
  greedy = decode.run(greedy_fn, p, prompts)
  hot = sampling_lib.Sampling(temperature=1.5, top_k=20, top_p=0.9)
  fn = decode.make_generate_fn(cfg, NEW, hot)
  first = decode.run(fn, p, prompts, seed=3)
  assert decode.run(fn, p, prompts, seed=3) == first
  assert decode.run(fn, p, prompts, seed=4) != first
  assert first != greedy
  top1 = decode.generate(cfg, p, prompts, max_new_tokens=NEW, seed=5,
                         sampling=sampling_lib.Sampling(temperature=1.0, top_k=1))
  assert top1 == greedy


@pytest.mark.parametrize("temperature", [1e-30, 1e-38, 1e-45])
def test_a_tiny_temperature_samples_the_most_likely_token(temperature):
  """Logits over a tiny temperature used to overflow to inf and make the draw NaN-driven (an empty note
  from `generate --temperature 1e-38`); it is the argmax now, as the limit T -> 0 is."""
  logits = jnp.array([[2.0, 7.5, -3.0, 7.25], [40.0, -1.0, 39.0, 0.0]])
  filtered = sampling_lib.filter_logits(logits, sampling_lib.Sampling(temperature))
  assert not np.isnan(np.asarray(filtered)).any()
  for seed in range(5):
    drawn = sampling_lib.sample(logits, jax.random.PRNGKey(seed), sampling_lib.Sampling(temperature))
    assert drawn.tolist() == [1, 0]


def test_top_p_keeps_the_smallest_set_reaching_p():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept = np.isfinite(sampling_lib.filter_logits(logits, sampling_lib.Sampling(1.0, 0, 0.75)))
  assert kept.tolist() == [[True, True, False, False]]
  kept = np.isfinite(sampling_lib.filter_logits(logits, sampling_lib.Sampling(1.0, 0, 0.1)))
  assert kept.tolist() == [[True, False, False, False]]
  kept = np.isfinite(sampling_lib.filter_logits(logits, sampling_lib.Sampling(1.0, 3, 1.0)))
  assert kept.tolist() == [[True, True, True, False]]


def test_stops_at_eos(model, prompts, greedy_fn):
  cfg, p = model
  free = decode.run(greedy_fn, p, prompts)
  eos = free[0][3]
  stop = free[0].index(eos)
  fn = decode.make_generate_fn(cfg, NEW, eos_id=eos)
  _, steps, _ = fn(p, *map(jnp.asarray, decode.left_pad(prompts[:1])), jax.random.PRNGKey(0))
  assert int(steps) == stop + 1  # the loop ended when the only row finished
  batch = decode.run(fn, p, prompts, eos_id=eos)
  assert batch[0] == free[0][:stop]  # cut before its EOS
  for row, full in zip(batch[1:], free[1:]):  # the others go on, each cut at its own first EOS
    assert row == (full[:full.index(eos)] if eos in full else full)


LOOKAHEAD = 3


@pytest.fixture(scope="module")
def attending_model(model):
  """`model` with its attention outputs scaled up 16x, so that each pick depends on the earlier tokens
  and their positions, not on the newest token alone (a slot or position error changes the tokens)."""
  cfg, p = model
  return cfg, jax.tree_util.tree_map_with_path(
      lambda path, x: x * 16 if any(getattr(k, "key", None) == "wo" for k in path) else x, p)


@pytest.fixture(scope="module")
def looping_prompts(model):
  """Prompts of different lengths, two of them repeating a phrase (drafts get kept) and one random."""
  rng = np.random.RandomState(2)
  phrase = [int(t) for t in rng.randint(3, model[0].vocab_size, 3)]
  return [[1] + phrase * 4, [1] + [int(t) for t in rng.randint(3, model[0].vocab_size, 9)], [1, 5] + phrase * 2]


def _expected_passes(prompts, greedy, rooms, k, eos=None, max_ngram=2):
  """Forward passes after the prefill that the draft rule (`reference_draft`) needs for each row to
  make rooms[b] tokens (or reach EOS), given the row's greedy tokens (at least rooms[b] + k)."""
  passes = []
  for prompt, tokens, room in zip(prompts, greedy, rooms):
    made, n = 1, 0
    while made < room and (eos is None or eos not in tokens[:made]):
      draft = reference_draft(list(prompt) + tokens[:made], k, max_ngram)
      kept = 0
      while kept < k and draft[kept] == tokens[made + kept]:
        kept += 1
      made, n = made + kept + 1, n + 1
    passes.append(n)
  return max(passes)


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_speculative_decoding_keeps_exactly_the_greedy_tokens(attending_model, looping_prompts, scan):
  """lookahead 3: the tokens of plain greedy decoding (itself equal to full recompute above) in fewer
  forward passes, as many as the draft rule predicts from those tokens."""
  cfg, p = _scanned(*attending_model) if scan else attending_model
  n = 20
  greedy = decode.run(decode.make_generate_fn(cfg, n + LOOKAHEAD), p, looping_prompts)
  fn = decode.make_generate_fn(cfg, n, lookahead=LOOKAHEAD)
  assert decode.run(fn, p, looping_prompts) == [g[:n] for g in greedy]
  _, made, passes = fn(p, *map(jnp.asarray, decode.left_pad(looping_prompts)), jax.random.PRNGKey(0))
  expected = _expected_passes(looping_prompts, greedy, [n] * 3, LOOKAHEAD)
  assert (int(made), int(passes)) == (n, expected)
  assert expected < n - 1  # some drafts were kept
  fn = decode.make_generate_fn(cfg, n, lookahead=LOOKAHEAD, max_ngram=1)
  _, _, passes = fn(p, *map(jnp.asarray, decode.left_pad(looping_prompts)), jax.random.PRNGKey(0))
  assert int(passes) == _expected_passes(looping_prompts, greedy, [n] * 3, LOOKAHEAD, max_ngram=1)


def test_speculative_decoding_copies_what_the_prompt_shows(model):
  """With the layers' output projections zeroed, a token's logits depend on that token alone, so a
  prompt that shows the chain the model makes from a token and then that token again gets the chain
  drafted and kept whole: 24 tokens in ceil(23 / 4) = 6 passes, the same tokens as plain decoding."""
  cfg, p = model
  p = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros_like(x) if any(getattr(k, "key", None) in ("wo", "w_down") for k in path) else x, p)
  n, start = 24, [[1, 17], [1, 23]]
  chains = decode.run(decode.make_generate_fn(cfg, n + LOOKAHEAD), p, start)
  prompts = [s + c + s[1:] for s, c in zip(start, chains)]
  fn = decode.make_generate_fn(cfg, n, lookahead=LOOKAHEAD)
  assert decode.run(fn, p, prompts) == [c[:n] for c in chains]
  _, made, passes = fn(p, *map(jnp.asarray, decode.left_pad(prompts)), jax.random.PRNGKey(0))
  assert (int(made), int(passes)) == (n, 6)
  # A prompt showing the chain with its 6th token changed to x: the second pass drafts x (rejected) and
  # its next position predicts f(x), which as EOS must not end the row: only kept tokens can.
  chain, one = chains[0][:n], decode.make_generate_fn(cfg, 1)
  x = next(t for t in range(3, cfg.vocab_size) if t not in chain and decode.run(one, p, [[1, t]])[0][0] not in chain)
  eos = decode.run(one, p, [[1, x]])[0][0]
  altered = start[0] + chain[:5] + [x] + chains[0][6:] + start[0][1:]
  for k in (0, LOOKAHEAD):
    assert decode.run(decode.make_generate_fn(cfg, n, eos_id=eos, lookahead=k), p, [altered], eos_id=eos) == [chain]


def test_speculative_decoding_stops_rows_at_eos_and_at_the_context(attending_model, looping_prompts):
  cfg, p = attending_model
  free = decode.run(decode.make_generate_fn(cfg, 16 + LOOKAHEAD), p, looping_prompts)
  for eos in free[1][:6]:  # some of these are also picked at drafts the step rejects: they must not end a row
    fn = decode.make_generate_fn(cfg, 16, eos_id=eos, lookahead=LOOKAHEAD)
    got = decode.run(fn, p, looping_prompts, eos_id=eos)
    assert got == [row[:16][:row.index(eos)] if eos in row[:16] else row[:16] for row in free]
    _, made, passes = fn(p, *map(jnp.asarray, decode.left_pad(looping_prompts)), jax.random.PRNGKey(0))
    assert int(made) == max(row[:16].index(eos) + 1 if eos in row[:16] else 16 for row in free)
    assert int(passes) == _expected_passes(looping_prompts, free, [16] * 3, LOOKAHEAD, eos)
  fn = decode.make_generate_fn(cfg, 16, max_positions=20, lookahead=LOOKAHEAD)
  rooms = [20 - len(q) for q in looping_prompts]  # 7, 10 and 12
  assert decode.run(fn, p, looping_prompts) == [row[:room] for row, room in zip(free, rooms)]
  _, made, passes = fn(p, *map(jnp.asarray, decode.left_pad(looping_prompts)), jax.random.PRNGKey(0))
  assert int(made) == 12 and int(passes) == _expected_passes(looping_prompts, free, rooms, LOOKAHEAD)
  full = decode.make_generate_fn(cfg, 16, max_positions=4, lookahead=LOOKAHEAD)  # no row has room: as plain
  assert decode.run(full, p, looping_prompts) == [[], [], []]
  assert [int(x) for x in full(p, *map(jnp.asarray, decode.left_pad(looping_prompts)), jax.random.PRNGKey(0))[1:]] == [1, 0]


def test_speculative_decoding_needs_greedy_sampling(model):
  with pytest.raises(ValueError, match="needs temperature 0"):
    decode.make_generate_fn(model[0], NEW, sampling_lib.Sampling(temperature=0.7), lookahead=2)
  with pytest.raises(ValueError, match="lookahead must be >= 0"):
    decode.make_generate_fn(model[0], NEW, lookahead=-1)


def test_truncate_at_stop_and_normalize_conversation():
  assert decode.truncate_at_stop("note\n### Instruction: x", generate.STOP_STRINGS) == "note"
  assert decode.truncate_at_stop("abc", ("z", "")) == "abc"
  # a stop string begun in the prompt's end and finished by the new text cuts at 0; one wholly inside
  # the prompt's end does not count
  assert decode.truncate_at_stop("### Instruction: x", generate.STOP_STRINGS, "### Response:\n") == ""
  assert decode.truncate_at_stop("# Response:", generate.STOP_STRINGS, "\n##") == ""
  assert decode.truncate_at_stop("ok\n### Response:", generate.STOP_STRINGS, "\n##") == "ok"
  assert decode.truncate_at_stop("xyz", ("ab",), "ab") == "xyz"
  assert decode.truncate_at_stop("bxyz", ("ab", "yz"), "a") == ""
  assert decode.truncate_at_stop("xbyz", ("ab", "yz"), "a") == "xb"
  text = "Doctor: Hi there.\n\nPATIENT:  I have a cough\nsince Monday.\n[patient_guest] he does."
  assert templates.normalize_conversation(text) == (
      "[doctor] Hi there.\n[patient] I have a cough since Monday.\n[patient_guest] he does.")
  with pytest.raises(ValueError, match="line 1"):
    templates.normalize_conversation("hello\nDoctor: hi")
  # MTS-Dialog's other speakers keep their own turns; a byte-order mark is not part of line 1; a
  # colon after a word that names no role continues the turn.
  mts = ("\ufeffDoctor: How did he fall?\nGuest_family: He slipped on ice.\nBP: 120/80.\nFamily: none.\n"
         "Guest_clinican: Noted.")
  assert templates.normalize_conversation(mts) == (
      "[doctor] How did he fall?\n[guest_family] He slipped on ice. BP: 120/80. Family: none.\n[guest_clinican] Noted.")


def test_training_shows_a_conversation_as_generation_does():
  """A note-writing example's prompt is exactly the generation input for the same conversation, in
  either accepted form (MTS-Dialog's `Doctor:` lines were trained as written and served as
  `[doctor]` lines); text without turns is trained as written, not dropped."""
  from heal_jax.data import examples  # pylint: disable=import-outside-toplevel
  for conversation in ("Doctor: Hi there.\nPatient: I have a cough\nsince Monday.\n",
                       "[doctor] hi\n\n[patient]   hello  \n", "\ufeffDoctor: ok\nGuest_family: he fell."):
    prompt, target = examples.texts({"conversation": conversation, "note": "CHIEF COMPLAINT\n\nCough."}, "conversation")
    assert prompt == generate.note_prompt_text(conversation) and target == "CHIEF COMPLAINT\n\nCough."
  prompt, _ = examples.texts({"conversation": "The patient said she was fine.", "note": "n"}, "conversation")
  assert prompt.endswith("Conversation:\nThe patient said she was fine.\n\n### Response:\n")


def test_generate_main_end_to_end(checkpoint, tmp_path, capsys):
  conv = tmp_path / "conv.txt"
  conv.write_text("Doctor: Hi, what brings you in today?\nPatient: I've had a cough for two weeks.\n")
  assert generate.main(["--checkpoint", str(checkpoint), "--conversation", str(conv),
                        "--max-new-tokens", "6"]) == 0
  captured = capsys.readouterr()
  printed = captured.out
  assert f"model {checkpoint}\n" in captured.err
  loaded = restore.load_model(checkpoint)
  expected = generate.generate_notes(
      loaded, ["[doctor] Hi, what brings you in today?\n[patient] I've had a cough for two weeks."],
      max_new_tokens=6)
  assert printed == expected[0] + "\n"


def test_generate_main_on_a_mesh_writes_the_same_note(checkpoint, tmp_path, capsys):
  conv = tmp_path / "conv.txt"
  conv.write_text("[doctor] Hi, what brings you in today?\n[patient] I've had a cough for two weeks.\n")
  command = ["--checkpoint", str(checkpoint), "--conversation", str(conv), "--max-new-tokens", "6"]
  assert generate.main(command) == 0
  alone = capsys.readouterr().out
  assert generate.main(command + ["--mesh", "data=2,tensor=-1"]) == 0  # one conversation, 2 rows: one is padding
  assert capsys.readouterr().out == alone
  assert generate.main(command + ["--mesh", "data=2,tensor=-1", "--lookahead", "4"]) == 0  # speculative
  assert capsys.readouterr().out == alone
  assert generate.main(command + ["--mesh", "tensor=3"]) == 2
  assert capsys.readouterr().err == ("heal-jax generate: error: mesh {'data': 1, 'fsdp': 1, 'tensor': 3} does not "
                                     "fit 8 devices\n")  # before the model loads


def test_generate_main_dtype_casts_the_model(checkpoint, tmp_path, capsys, monkeypatch):
  """--dtype bfloat16 generates with bfloat16 weights and compute, as eval's --dtype does."""
  conv = tmp_path / "conv.txt"
  conv.write_text("[doctor] Hi, what brings you in today?\n[patient] I've had a cough for two weeks.\n")
  seen = []
  real_plan = generate.plan_notes
  monkeypatch.setattr(generate, "plan_notes", lambda loaded, *a, **k: seen.append(loaded) or real_plan(loaded, *a, **k))
  assert generate.main(["--checkpoint", str(checkpoint), "--conversation", str(conv), "--max-new-tokens", "6",
                        "--dtype", "bfloat16"]) == 0
  (loaded,) = seen
  assert loaded.cfg.compute_dtype == "bfloat16"
  assert {str(x.dtype) for x in jax.tree.leaves(loaded.params)} == {"bfloat16"}
  assert capsys.readouterr().out == generate.generate_notes(loaded, [conv.read_text()], max_new_tokens=6)[0] + "\n"


def test_generate_main_errors_exit_2(checkpoint, tmp_path, capsys):
  conv = tmp_path / "conv.txt"
  conv.write_text("[doctor] hello.\n[patient] hi.\n")
  assert generate.main(["--checkpoint", str(tmp_path / "nope"), "--conversation", str(conv)]) == 2
  assert "nope" in capsys.readouterr().err
  assert generate.main(["--checkpoint", str(checkpoint), "--conversation", str(tmp_path / "x.txt")]) == 2
  assert "x.txt" in capsys.readouterr().err
  (tmp_path / "bad.txt").write_text("just some text\n")
  assert generate.main(["--checkpoint", str(checkpoint), "--conversation", str(tmp_path / "bad.txt")]) == 2
  assert "not a turn" in capsys.readouterr().err
  assert generate.main(["--checkpoint", str(checkpoint), "--conversation", str(conv), "--top-p", "0"]) == 2
  assert "top-p" in capsys.readouterr().err
  assert generate.main(["--checkpoint", str(checkpoint), "--conversation", str(conv), "--temperature", "nan"]) == 2
  assert "temperature" in capsys.readouterr().err
  assert generate.main(["--checkpoint", str(checkpoint)]) == 2
  capsys.readouterr()
  assert generate.main(["--checkpoint", str(checkpoint), "--conversation", str(conv), "--lookahead", "-1"]) == 2
  assert "--lookahead must be >= 0, got -1" in capsys.readouterr().err
  assert generate.main(["--checkpoint", str(checkpoint), "--conversation", str(conv), "--lookahead", "3",
                        "--temperature", "0.5"]) == 2
  assert "--lookahead keeps only greedy tokens: it needs --temperature 0" in capsys.readouterr().err
  for seed in ("4294967296", "-1", "99999999999999999999"):  # PRNGKey keeps 32 bits: 2**32 drew as 0 did
    assert generate.main(["--checkpoint", str(checkpoint), "--conversation", str(conv), "--seed", seed]) == 2
    assert f"--seed must be in [0, 2**32), got {seed}" in capsys.readouterr().err
  (tmp_path / "empty_turns.txt").write_text("[doctor]\n[patient]\n")
  assert generate.main(["--checkpoint", str(checkpoint), "--conversation", str(tmp_path / "empty_turns.txt")]) == 2
  assert "all 2 turns are empty: no conversation text" in capsys.readouterr().err


def test_sharded_decoding_matches_and_constrains_the_cache(model, prompts, greedy_fn):
  cfg, p = model
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  batch = prompts + prompts[:1]  # 4 rows: divisible by data x fsdp
  expected = decode.run(greedy_fn, p, batch)
  sharded = jax.device_put(p, mesh_lib.logical_shardings(llama.param_shapes(cfg), mesh))
  with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_RULES):
    fn = decode.make_generate_fn(cfg, NEW)
    assert decode.run(fn, sharded, batch) == expected
    assert decode.run(decode.make_generate_fn(cfg, NEW, lookahead=LOOKAHEAD), sharded, batch) == expected
    tokens_BxP, pad_B = decode.left_pad(batch)
    hlo = fn.lower(sharded, tokens_BxP, pad_B, jax.random.PRNGKey(0)).as_text()
  slots = tokens_BxP.shape[1] + NEW
  for shape in (f"8x{slots}", f"{slots}x8"):  # keys [B, K, Dh, S], values [B, K, S, Dh]
    assert f'[{{"data", "fsdp"}}, {{"tensor"}}, {{}}, {{}}]> : tensor<4x2x{shape}xf32>' in hlo
  assert nn.logical_to_mesh(llama.cache_logical_axes(cfg), mesh_lib.LOGICAL_RULES)["layers_0"]["k"] == (
      jax.sharding.PartitionSpec(("data", "fsdp"), "tensor", None, None))


def test_notes_stay_within_the_models_context(checkpoint):
  loaded = restore.load_model(checkpoint)
  tok = tokenizer_lib.Tokenizer(loaded.tokenizer_dir)
  conversation = "[doctor] Hi, what brings you in today?\n[patient] I've had a cough for two weeks."
  prompt_tokens = len(tok.encode(generate.note_prompt_text(conversation), add_bos=True))
  room = loaded.cfg.max_position_embeddings - prompt_tokens
  messages = []
  clamped = generate.generate_notes(loaded, [conversation], max_new_tokens=room + 500, log=messages.append,
                                    stop_strings=())
  assert messages[0] == (f"warning: 1 of 1 note(s) have room for fewer than {room + 500} new tokens in the model's "
                         f"context of {loaded.cfg.max_position_embeddings} (as few as {room}: the longest prompt has "
                         f"{prompt_tokens} tokens); each stops there")
  del messages[:]
  exact = generate.generate_notes(loaded, [conversation], max_new_tokens=room, log=messages.append, stop_strings=())
  assert clamped == exact and not any("have room for fewer" in m for m in messages)
  long_conversation = "\n".join(["[doctor] Tell me more about the cough and the fever."] * 200)
  with pytest.raises(ValueError, match="no room for a note"):
    generate.generate_notes(loaded, [long_conversation], max_new_tokens=8)


def test_a_note_cut_by_the_token_limit_is_named(checkpoint):
  """A note that reaches --max-new-tokens without EOS or a stop string gets a warning (it was silent)."""
  loaded = restore.load_model(checkpoint)
  tok = tokenizer_lib.Tokenizer(loaded.tokenizer_dir)
  conversation = "[doctor] Hi, what brings you in today?\n[patient] I've had a cough for two weeks."
  ids = tok.encode(generate.note_prompt_text(conversation), add_bos=True)
  reached = []
  for limit in (2, 5):
    new = decode.generate(loaded.cfg, jax.device_put(loaded.params), [ids], max_new_tokens=limit,
                          eos_id=tok.eos_id, vocab_limit=tok.vocab_size)[0]
    messages = []
    generate.generate_notes(loaded, [conversation], max_new_tokens=limit, log=messages.append, stop_strings=())
    expected = ["warning: 1 of 1 note(s) reached the limit of new tokens without ending (no EOS or stop "
                "string): they may be cut short; raise --max-new-tokens"] if len(new) == limit else []
    assert [m for m in messages if "empty" not in m] == expected  # (2 tokens may decode to whitespace)
    reached.append(len(new) == limit)
  assert any(reached)  # this random model emits no EOS that early: the warning case was exercised


def test_empty_and_cut_notes_are_counted_in_the_warnings():
  """A blank note used to pass with at most the limit warning (a small model on a long ACI-Bench prompt)."""
  notes = [generate.Note("", 32, "limit"), generate.Note("S:", 5, "eos"), generate.Note("", 3, "context"),
           generate.Note("ok", 2, "stop_string")]
  messages = []
  generate.warn_unfinished(notes, messages.append)
  assert messages == [
      "warning: 2 of 4 note(s) are empty: the model wrote only whitespace before it stopped or was cut (a model too "
      "small or too briefly tuned for these conversations?)",
      "warning: 1 of 4 note(s) reached the limit of new tokens without ending (no EOS or stop string): they may be "
      "cut short; raise --max-new-tokens",
      "warning: 1 of 4 note(s) filled the model's context without ending: they may be cut short; shorten their "
      "conversations or use a model with a longer context"]
  messages.clear()
  generate.warn_unfinished(notes[1:2], messages.append)
  assert messages == []


def test_a_stop_string_begun_at_the_prompts_end_ends_the_note(model):
  """The note prompt ends in "### Response:\\n"; a model that starts its output with "### Instruction:"
  has written the stop string "\\n### Instruction:" across the boundary. Only the new tokens' text used
  to be searched, so the note ran on to its limit (a stub tokenizer decodes the first greedy token so)."""
  cfg, p = model
  prompt = [1, 5, 9, 13, 22]
  first = decode.run(decode.make_generate_fn(cfg, 1), p, [prompt])[0][0]

  class Stub:
    eos_id, vocab_size = None, cfg.vocab_size

    def decode(self, ids):
      return "".join("### Instruction:" if i == first else "### Response:\n" if i == 22 else " w" for i in ids)

  plan = generate.plan_prompts([prompt], cfg.max_position_embeddings, max_new_tokens=6, batch_size=1, labels=["c"])
  (_, [(_, note)]), = generate.generate_batches(cfg, p, Stub(), plan)
  assert (note.text, note.ended, note.new_tokens) == ("", "stop_string", 6)
