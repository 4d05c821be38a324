"""Layerscope offline training pipeline: data, model building, training, publishing (python -m training)."""
