"""Test and demo helpers: a contract-faithful fake BFL API, image rendering and ASGI serving.

These modules are importable from production code (the product's "demo mode" runs the fake
in-process), but they never talk to the real network on their own.
"""
