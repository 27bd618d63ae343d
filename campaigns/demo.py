"""The demo campaign seeded by `make run`."""


def demo_campaign_seed() -> list[str]:
    """Create the demo repositories and campaign; returns lines to print. Idempotent."""
    return []
