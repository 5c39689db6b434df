"""Benchmarks of mcp-tasks: figures, peers and the harness that runs them.

Run them with ``benchmarks/run`` (``--quick`` for the CI smoke mode).
"""
