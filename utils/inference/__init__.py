"""The inference front: one interface over every weights format (DetectBackend), several .pt detectors as one
(Ensemble), and the images-in, detections-out Python API (AutoShape, Detections). Imports the floors below the
engine, never the engine."""
