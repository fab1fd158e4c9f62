"""fedsilo's federated-learning core: pure numpy/torch code, no orchestration or tracking imports.

Everything here is deterministic given its injected seeds and unit-testable in milliseconds.
"""
