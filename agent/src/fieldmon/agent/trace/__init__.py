"""Path traces: where on the path to a link's far end the loss is (mtr-like, hop by hop).

`probe` sends the TTL-limited probes and `analysis` reads them; both run in a short-lived
subprocess (`python -m fieldmon.agent.trace ADDRESS ...`, which prints the trace as JSON), so
the daemon never loads them. `runner` is the daemon's side: when and how often to trace, the
subprocess, and the rows it publishes.
"""
