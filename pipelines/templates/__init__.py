"""File templates for `segloop init` (string.Template: `${name}` placeholders, `$$` for `$`)."""
