"""handreid: CLIP-based hand re-identification, trained in two stages."""

__version__ = "0.1.0"
