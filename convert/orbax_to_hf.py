"""Export a heal-jax checkpoint as an HF directory: `python convert/orbax_to_hf.py SRC DST`.

Same as `heal-jax convert orbax-to-hf SRC DST [--max-shard-gb G] [--dtype D] [--overwrite]` (`--dtype`:
for a training work directory, default bfloat16). The result loads
with `transformers.AutoModelForCausalLM.from_pretrained(DST)` and `AutoTokenizer.from_pretrained(DST)`.
"""

import sys

from heal_jax import cli

if __name__ == "__main__":
  sys.exit(cli.main(["convert", "orbax-to-hf", *sys.argv[1:]]))
