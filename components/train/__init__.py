"""Train: a segmentation model on preprocessed tiles, tracked in MLflow."""
