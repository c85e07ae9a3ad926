"""Operations on tensors and predictions: box formats and IoU, NMS, post-processing, detection metrics and the
training loss. Imports only utils.core."""
