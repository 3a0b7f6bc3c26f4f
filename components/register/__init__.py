"""Register and compare: MLflow model versions, aliases champion/challenger."""
