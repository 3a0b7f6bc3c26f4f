"""segloop components: everything that runs inside a component container.

`components.core` holds the shared pieces; each stage has a folder with its logic as plain
functions (no KFP import) and a thin KFP wrapper in `component.py`.
"""
