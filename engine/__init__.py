"""terraseg engine: data, augmentation, losses, metrics, training, inference, logging."""

__version__ = "0.1.0"
