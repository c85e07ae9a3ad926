"""Pictures: drawing on images (OpenCV) and charts (matplotlib), and the feature-map hook of --visualize. Imports
utils.core and utils.ops; computes nothing it draws."""
