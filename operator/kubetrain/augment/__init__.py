"""The augmentation stage's library: more training rows from the rows there are.

- ``image``: kornia transforms (affine, flips, noise, erasing), batched on the GPU
  when there is one;
- ``tabular``: Gaussian noise scaled per column, and SMOTE oversampling of minority classes;
- ``mix``: mixup and CutMix, applied per batch at training time;
- ``store``: the parts the augmentation work units write and the training unit reads.

Augmentation only ever starts from rows of the training split; every sample records the row of
the original dataset it came from (``source``), so a cross-validation fold can drop samples that
came from its validation rows.
"""

from .checks import AugmentationError, AugmentationSpecError, check_augmentation

__all__ = ["AugmentationError", "AugmentationSpecError", "check_augmentation"]
