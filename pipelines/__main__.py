"""`python -m pipelines` is the `segloop` command."""

from pipelines.cli import main

main()
