"""Checkpoint I/O below both the engine and the inference front: the file format (ours, and official YOLOv5
pickles read through an allow-list) and models rebuilt from it."""
