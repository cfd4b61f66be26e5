import numpy as np
import pytest

from equiprobe.services.match_projection import Projection, fit_projection


def _images(rng, n, k=6, width=40, edit_dims=30):
    """Photos differ in every direction; edits move them a lot, but only along the first
    `edit_dims` directions (as an edit moves an embedding more than it moves a photo's identity)."""
    base = rng.normal(size=(n, 1, width))
    moves = np.zeros((n, k, width))
    moves[:, 1:, :edit_dims] = rng.normal(scale=3.0, size=(n, k - 1, edit_dims))
    return base + moves


def _recall(project, references, queries):
    ref = project(references)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    q = project(queries.reshape(-1, queries.shape[-1]))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    best = (q @ ref.T).argmax(1)
    return float(np.mean(best == np.repeat(np.arange(len(references)), queries.shape[1])))


def test_the_projection_keeps_copies_near_their_original(tmp_path):
    rng = np.random.default_rng(0)
    train, test = _images(rng, 300), _images(rng, 100)
    projection = fit_projection([train[:150], train[150:]], dim=10)
    plain = Projection(np.zeros(40, np.float32), np.ones(40, np.float32), np.eye(40, dtype=np.float32))
    raw, learned = _recall(plain, test[:, 0], test[:, 1:]), _recall(projection, test[:, 0], test[:, 1:])
    assert learned > 0.95 > raw + 0.2
    projection.save(tmp_path)
    again = Projection.load(tmp_path)
    np.testing.assert_array_equal(again.matrix, projection.matrix)


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="no training images"):
        fit_projection([])
    with pytest.raises(ValueError, match="projection.npz is missing"):
        Projection.load(tmp_path)
    (tmp_path / "projection.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable"):
        Projection.load(tmp_path)
    projection = fit_projection([_images(np.random.default_rng(1), 20)], dim=4)
    with pytest.raises(ValueError, match="takes 40 values"):
        projection(np.zeros((1, 39)))
