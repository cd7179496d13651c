"""Example services: plain classes with no import from micromessaging."""
