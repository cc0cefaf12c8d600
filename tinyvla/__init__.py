"""tinyvla: turn a stock vision-language model into a robot policy that writes actions as text (the VLA-0 recipe)."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy so that `import tinyvla` (and the pure core) never pulls in torch.
    if name == "Policy":
        from tinyvla.policy import Policy

        return Policy
    raise AttributeError(name)
