"""Convert an HF LLaMA directory into a heal-jax checkpoint: `python convert/hf_to_orbax.py SRC DST`.

Same as `heal-jax convert hf-to-orbax SRC DST [--allow-pickle] [--overwrite]`.
"""

import sys

from heal_jax import cli

if __name__ == "__main__":
  sys.exit(cli.main(["convert", "hf-to-orbax", *sys.argv[1:]]))
