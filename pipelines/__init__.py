"""segloop pipelines: pipeline graphs, platform options, compile / local run / submit, the CLI."""
