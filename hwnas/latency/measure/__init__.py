"""Measuring latency: the timing loops (``timing``), the runtimes they time on (``runtimes``), block
profiles alone (``blocks``) or in place inside whole networks (``in_network``), and the CPU heap regime
torch is timed in (``allocator``)."""
