"""Memory and time of the checkpoint fingerprint (heal_jax/checkpoint/fingerprint.py) on this backend.

The trainer fingerprints the whole train state (parameters and both AdamW moments) at every save.
XLA:CPU keeps two uint32 temporaries the size of each array; a GPU backend should fuse the
elementwise work into the reductions. This prints, for LLaMA2-7B-width layers, the compiled call's
temporary bytes as a share of the state it reads (the comparison: 0 is fully fused, 2.0 is two
copies), and, with --time, the time of one call against a plain sum of the same arrays (the reference).

  python bench/fingerprint.py [--layers 2] [--time]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from heal_jax.checkpoint import fingerprint  # pylint: disable=wrong-import-position

HIDDEN, MLP = 4096, 11008


def state_shapes(layers: int) -> list[jax.ShapeDtypeStruct]:
  """fp32 parameters of `layers` LLaMA2-7B-width layers, three times (weights, Adam mu and nu)."""
  one = [(HIDDEN, HIDDEN)] * 4 + [(HIDDEN, MLP), (HIDDEN, MLP), (MLP, HIDDEN), (HIDDEN,), (HIDDEN,)]
  return [jax.ShapeDtypeStruct(s, jnp.float32) for _ in range(3 * layers) for s in one]


def _best(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(args))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(args))
    best = min(best, time.perf_counter() - start)
  return best


@jax.jit
def _plain_sums(arrays):
  return [jnp.sum(x) for x in arrays]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--time", action="store_true", help="also time one call (allocates the state)")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  shapes = state_shapes(args.layers)
  state_bytes = sum(s.size * 4 for s in shapes)
  memory = fingerprint._sums.lower(shapes).compile().memory_analysis()  # pylint: disable=protected-access
  temp = int(memory.temp_size_in_bytes)
  result = {"bench": "fingerprint", "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
            "layers": args.layers, "state_bytes": state_bytes, "temp_bytes": temp,
            "temp_over_state": round(temp / state_bytes, 4)}
  if args.time:
    arrays = [jnp.full(s.shape, 0.5, s.dtype) for s in shapes]
    ours = _best(fingerprint._sums, arrays, args.repeats)  # pylint: disable=protected-access
    plain = _best(_plain_sums, arrays, args.repeats)
    result.update(fingerprint_s=round(ours, 5), plain_sum_s=round(plain, 5), ratio=round(ours / plain, 2),
                  fingerprint_gb_per_s=round(state_bytes / ours / 1e9, 1))
  print(f"fingerprint of {state_bytes / 2**30:.2f} GiB of fp32 state ({args.layers} layers x 3) on "
        f"{result['backend']}: temporaries {temp / 2**30:.2f} GiB = {result['temp_over_state']:.2f}x the state"
        + (f"; {result['fingerprint_s'] * 1e3:.1f} ms vs a plain sum {result['plain_sum_s'] * 1e3:.1f} ms "
           f"({result['ratio']:.2f}x)" if args.time else ""))
  print(json.dumps(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
