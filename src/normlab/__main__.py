"""`python -m normlab` is the same as the `normlab` console script."""

from normlab.cli import main

main()
