"""The harness the tests and the benchmarks share: real Redis servers, worker processes, engines in
network namespaces, a registry, a CHP, and the stack of them a test or a benchmark drives.

tests/ holds the tests (and their fixtures, in tests/conftest.py); bench/ the benchmarks. Both
import this package, and neither imports the other.
"""
