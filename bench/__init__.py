"""Benchmarks: Layerscope against the naive server and the HTTP ceiling (`python -m bench`)."""
