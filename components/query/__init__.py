"""The query stage: select image records from the image database."""
