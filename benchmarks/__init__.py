"""Performance harness: each `bench_*.py` prints its figures as ratios or rates (`make bench`)."""
