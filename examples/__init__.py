"""Examples that use blocklink (not installed with it): ``python -m examples.demo`` from the checkout."""
