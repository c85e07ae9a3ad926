"""Data: dataset and hyperparameter YAMLs, the label scan and its cache, images, the training dataset and loader,
augmentations, inference sources, the generated datasets and COCO json. Imports utils.core and utils.ops."""
