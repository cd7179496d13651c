"""The seed's calculator: plain domain code, nothing about transport.

Serve it with ``micromessaging worker micromessaging.examples.calculator:Calculator``.
"""


class Calculator:
    """Adds and subtracts."""

    def add(self, a, b):  # type: ignore[no-untyped-def]
        """The sum of a and b."""
        return a + b

    def subtract(self, a, b):  # type: ignore[no-untyped-def]
        """The difference of a and b."""
        return a - b
