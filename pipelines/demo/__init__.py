"""The demo and its scaffolding: synthetic data, the simulated annotator and the loop's goals.

Used by `segloop demo`, `segloop data synth`, the tests and the benchmarks; not part of the
component images (images/.dockerignore leaves this folder out), since no stage needs it.
"""
