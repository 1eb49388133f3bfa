"""Data sources: CIFAR-10 (tfds, folder, synthetic; held on device) and ImageNet (streamed)."""
