"""`python -m backend.evaluate`: variants of the method compared on the shapes world, and its report."""
