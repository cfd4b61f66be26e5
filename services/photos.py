"""Real photographs that installed packages ship (scikit-image, scikit-learn); no downloads.

Used as style references by the transform catalog and, through clients, as built-in data.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# scikit-image sample images that are stored inside the package (others are fetched on demand).
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field",
                  "immunohistochemistry", "brick", "grass", "gravel", "retina", "moon", "coins",
                  "colorwheel")


@lru_cache(maxsize=1)
def package_photos() -> dict[str, np.ndarray]:
    """name -> RGB uint8 array (grayscale photos are expanded to three channels)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = {name: getattr(data, name)() for name in SKIMAGE_PHOTOS}
    sample = load_sample_images()
    for filename, image in zip(sample.filenames, sample.images):
        photos[filename.rsplit("/", 1)[-1].split(".")[0]] = image
    return {name: _rgb(image) for name, image in photos.items()}


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))
