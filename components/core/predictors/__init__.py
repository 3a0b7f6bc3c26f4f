"""Predictors beyond the built-in `smp` checkpoint models.

- `exg`: a training-free vegetation pre-annotator (excess-green index), registered as `exg`.
- `loading`: custom predictors from a module path (`my_pkg.my_model:build`) or a
  `segloop.predictors` entry point, with their params validated.
- `classmap`: the `infer.label_map` / `infer.drop` class handling, as a wrapper predictor.
"""

from components.core.predictors import exg as _exg  # noqa: F401 - registers `exg`
