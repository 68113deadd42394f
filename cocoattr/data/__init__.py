"""Data: downloading COCO and COCO Attributes, loading them, mining caption labels, datasets."""
