"""Stage `upload-cvat`: images and pre-annotations to CVAT tasks (or the folder backend)."""
