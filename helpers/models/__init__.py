"""The networks: the U-Net and its parts (``unet``), the coarse segmenter (``coarse``), spatial
propagation (``propagation``: CSPN, DySPN), the refiners (``refiner``, with ``guidance`` for the
guidance net's head and warm starts), the guided filter, the losses and degraded start maps."""
