"""Stage `download-cvat`: refined masks from CVAT tasks (or the folder backend) as class-id PNGs."""
