"""The select stage: which pre-annotated images people should refine first."""
