"""Training of the CNN engine: lung references, the slice cache, augmentation, the train loop."""
