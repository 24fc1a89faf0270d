"""The leaf under the search space and the surgery: slicing layers in place and ranking units.

Nothing here imports from the rest of ``structsearch``, so family adapters (``space``) and student
building (``surgery``) can both use it without importing each other.
"""
