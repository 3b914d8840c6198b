"""TESTS ONLY: what the end-to-end tests and `consortium bench --byzantine` compose around a real
member (faults.py), and the entry point that runs one (`python -m consortium.testing.member`).
Nothing in the node imports this package; `consortium node start` has no test options."""
