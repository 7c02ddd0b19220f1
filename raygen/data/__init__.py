"""Real image data as Ray Datasets with columns `image` (float32 [C, H, W] in [0, 1]) and `label` (int64).

Sources: the built-in `digits` (1,797 real 8x8 handwritten digits shipped inside scikit-learn, so
nothing is downloaded), an image folder in ImageFolder layout (`root/<class>/<file>.png`), or
Parquet with an image column (encoded bytes or a tensor) and a label column.
"""

from raygen.data.arrays import IMAGE_EXTENSIONS, digits_arrays
from raygen.data.real import digits_dataset, load_dataset

__all__ = ["IMAGE_EXTENSIONS", "digits_arrays", "digits_dataset", "load_dataset"]
