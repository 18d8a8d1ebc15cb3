"""The embedded demo world: procedurally drawn shapes with ground-truth captions, and its small model."""
