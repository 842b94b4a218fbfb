"""`python -m ofa_jax.instructions "<instruction>"`: the instruction linter."""

import sys

from ofa_jax.instructions.grammar import main

if __name__ == "__main__":
  sys.exit(main())
