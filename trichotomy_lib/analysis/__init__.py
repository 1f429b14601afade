"""What the notebooks show: one function per saved table, built from the stages' artifacts.

This layer sits above ``stages``: every function takes the ``Pipeline`` (or what a loader
returned), asks the stages' loaders for cached artifacts and returns a DataFrame (or the
numbers behind a figure). A notebook calls one of them per table and only plots.
Modules follow the notebooks: ``data`` (00), ``reid`` (01), ``classifier`` (02),
``encoder`` (03), ``diffusion`` (04), ``generate`` (05), ``privacy`` (06), ``utility`` (07),
``sweep`` (08).
"""
