"""Layerscope offline training pipeline (`python -m training`).

Data, model building from model.yaml, training, evaluation and publishing of versions.
"""
