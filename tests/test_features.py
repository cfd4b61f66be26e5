"""FEATURES: the early blocks' pooled statistics beside EMBEDDING, from the encoder to the store
and the probe's input (no server here; served parity is in tests/test_parity.py and the served
detector with FEATURES in tests/test_detector_features.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from equiprobe.clients.concat import concat_stores
from equiprobe.clients.store import Store, StoreError, StoreWriter
from equiprobe.services.contract import EMBEDDING, FEATURES, PIXELS, probe_inputs
from equiprobe.services.encoders import create_encoder, get_encoder
from equiprobe.services.encoders.registry import FeatureTaps
from equiprobe.services.encoders.taps import TappedNetwork, tap_onnx, tapped_reference
from equiprobe.services.export import FEATURES_TOLERANCE, export_encoder, random_normalized_batch
from equiprobe.services.runtime import ort_session
from equiprobe.trainer.data import ProbeData, Task

from .test_trainer import synthetic_store


def numpy_statistics(activation: np.ndarray, channels_last: bool = False) -> np.ndarray:
    """What FEATURES must hold for one block: per channel, the mean then the std over space."""
    axes = (1, 2) if channels_last else (2, 3)
    return np.concatenate([activation.mean(axes), activation.std(axes)], axis=1)


def test_squeezenet_taps_conv1_to_fire5_as_declared():
    spec = get_encoder("squeezenet1_1")
    assert [b for b, _ in spec.features.blocks] == ["conv1", "fires.fire2", "fires.fire3", "fires.fire4", "fires.fire5"]
    assert spec.feature_dim == 1664  # the 1,664 values issue 23 measured
    columns = spec.features.columns()
    assert columns[0] == {"block": "conv1", "channels": 64, "mean": [0, 64], "std": [64, 128]}
    assert columns[-1]["std"][1] == spec.feature_dim


def test_tapped_network_gives_each_blocks_statistics_in_order():
    network = create_encoder("squeezenet1_1")
    taps = get_encoder("squeezenet1_1").features
    seen = {}
    for block, _ in taps.blocks:
        network.get_submodule(block).register_forward_hook(
            lambda m, i, o, block=block: seen.__setitem__(block, o.detach().numpy()))
    x = torch.from_numpy(random_normalized_batch(get_encoder("squeezenet1_1").preprocess, 2))
    with torch.no_grad():
        embedding, features = TappedNetwork(network, taps).features(x)
    expected = np.concatenate([numpy_statistics(seen[b]) for b, _ in taps.blocks], axis=1)
    np.testing.assert_allclose(features.numpy(), expected, rtol=1e-3, atol=1e-2)
    with torch.no_grad():
        np.testing.assert_allclose(embedding.numpy(), network(x).numpy(), rtol=1e-5)  # EMBEDDING unchanged


def test_onnx_taps_channels_last_tensors():
    """open_nsfw ships as an NHWC ONNX graph: its taps are nodes added on the named tensors."""
    node = onnx.helper.make_node
    graph = onnx.helper.make_graph(
        [node("Relu", ["x"], ["act"]), node("ReduceMean", ["act"], ["embedding"], axes=[1, 2], keepdims=0)], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 5, 7, 3])],
        [onnx.helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, ["batch", 3])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    tapped_model = tap_onnx(model, FeatureTaps((("act", 3),), layout="NHWC"), FEATURES)
    assert "ReduceMean" in {n.op_type for n in tapped_model.graph.node[2:]}  # channels last: no GlobalAveragePool
    onnx.checker.check_model(tapped_model)
    import onnxruntime as ort

    x = np.random.default_rng(0).normal(size=(4, 5, 7, 3)).astype(np.float32)
    session = ort.InferenceSession(tapped_model.SerializeToString(), providers=["CPUExecutionProvider"])
    embedding, features = session.run(["embedding", FEATURES], {"x": x})
    np.testing.assert_allclose(features, numpy_statistics(np.maximum(x, 0), channels_last=True), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no tensor 'missing'"):
        tap_onnx(model, FeatureTaps((("missing", 3),)), FEATURES)


@pytest.mark.parametrize("encoder", ["squeezenet1_1", "open_nsfw", "efficientnet_lite2"])
def test_export_gives_features_that_match_the_source_network(encoder, tmp_path):
    spec = get_encoder(encoder)
    result = export_encoder(spec, create_encoder(encoder), tmp_path / "e.onnx")
    assert result.within_tolerance
    x = random_normalized_batch(spec.preprocess, 2, seed=5)
    embedding, features = ort_session(result.path).run([EMBEDDING, FEATURES], {PIXELS: x})
    assert embedding.shape == (2, spec.dim) and features.shape == (2, spec.feature_dim)
    with torch.no_grad():  # the source network's own activations, statistics in torch
        expected = tapped_reference(spec, create_encoder(encoder))(torch.from_numpy(x))[1].numpy()
    np.testing.assert_allclose(features, expected, rtol=0, atol=FEATURES_TOLERANCE * max(1.0, float(np.abs(expected).max())))
    assert result.features_max_abs_diff <= FEATURES_TOLERANCE * max(1.0, result.features_scale)
    for block in spec.features.columns():  # standard deviations are never negative
        assert (features[:, block["std"][0]:block["std"][1]] >= 0).all()


def features_store(path, features_dim: int = 6, images: int = 12):
    """A synthetic fine store with FEATURES: each version's features are its embedding's first
    columns plus 1000, so a test can tell which column came from where."""
    synthetic_store(path.with_name(path.name + "_plain"), "fine", images=images, dim=8)
    plain = Store.open(path.with_name(path.name + "_plain"))
    manifest = {**plain.manifest, "features_dim": features_dim,
                "feature_layout": FeatureTaps((("b", features_dim // 2),)).columns()}
    store = Store.create_or_resume(path, manifest)
    writer = StoreWriter(store)
    embeddings = np.asarray(plain.array("embeddings"), np.float32)
    for r in range(images):
        writer.put(r, embeddings=embeddings[r], params=np.asarray(plain.array("params")[r]),
                   key=f"img{r:03d}", image_key=f"{r:016x}", label=-1, split="test" if r % 4 == 0 else "train",
                   index=r, features=embeddings[r][:, :features_dim] + 1000)
    writer.commit(list(range(images)))
    return Store.open(path)


def test_a_store_holds_features_beside_embeddings_and_refuses_rows_without_them(tmp_path):
    store = features_store(tmp_path / "s")
    assert store.features_dim == 6 and "features" in store.files
    assert store.array("features").shape == (12, 31, 6)
    writer = StoreWriter(Store.create_or_resume(tmp_path / "s", store.manifest))
    with pytest.raises(StoreError, match="came without them"):
        writer.put(0, embeddings=np.zeros((31, 8)), params=np.zeros((31, store.manifest["params_width"])),
                   key="k", image_key="0", label=-1, split="train", index=0)


def test_probe_data_reads_embeddings_then_features(tmp_path):
    store = features_store(tmp_path / "s")
    task = Task.from_store(store, "fine")
    with_features = ProbeData.from_store(store, task, features=True)
    assert with_features.input_dims == [8, 6] and with_features.dim == 14
    x, _, versions = next(with_features.batches("train", 50))
    rows, _ = with_features.examples("train")
    embeddings = np.asarray(store.array("embeddings"), np.float32)
    np.testing.assert_array_equal(x[:, :8], embeddings[rows[:50], versions])
    features = np.asarray(store.array("features"), np.float32)
    np.testing.assert_array_equal(x[:, 8:], features[rows[:50], versions])
    assert (x[:, 8:] > 900).all() and (np.abs(x[:, :8]) < 100).all()  # the columns did not swap
    plain = ProbeData.from_store(store, task)
    assert plain.dim == 8 and next(plain.batches("train", 50))[0].shape == (50, 8)
    with pytest.raises(ValueError, match="holds no FEATURES"):
        ProbeData.from_store(Store.open(tmp_path / "s_plain"), task, features=True)


def test_joined_stores_put_every_embedding_before_every_features_block(tmp_path):
    a, b = features_store(tmp_path / "a"), features_store(tmp_path / "b", features_dim=4)
    for store, name in ((a, "enc_a"), (b, "enc_b")):  # as two encoders' stores of the same images
        manifest = {**store.manifest, "encoder": name}
        (store.path / "manifest.json").write_text(__import__("json").dumps(manifest))
    joined = concat_stores([a.path, b.path], tmp_path / "ab")
    assert joined.manifest["dim"] == 16 and joined.features_dim == 10
    assert [c["part"] for c in joined.manifest["feature_layout"]] == ["enc_a", "enc_b"]
    assert joined.manifest["feature_layout"][1]["mean"] == [6, 8]  # b's block, shifted past a's 6 columns
    np.testing.assert_array_equal(np.asarray(joined.array("features"))[:, :, 6:], np.asarray(b.array("features")))
    names = [i.name for i in probe_inputs([8, 8], [6, 4])]
    assert names == ["EMBEDDING_0", "EMBEDDING_1", "FEATURES_0", "FEATURES_1"]
    assert [i.name for i in probe_inputs([8], [6])] == [EMBEDDING, FEATURES]
    assert [i.name for i in probe_inputs([8], [])] == [EMBEDDING]


def test_a_detector_is_judged_on_another_catalogs_test_sources(tmp_path):
    """card_on_store: a detect-catalog probe's card on a fine store of the same encoder, with the
    probe's own threshold and calibration; another encoder's store is refused."""
    from equiprobe.trainer.probes import ProbeConfig
    from equiprobe.trainer.store_card import StoreCardError, card_on_store
    from equiprobe.trainer.train import train_probes

    detect = synthetic_store(tmp_path / "detect", "detect", images=40, dim=16)
    fine = synthetic_store(tmp_path / "fine", "fine", images=24, dim=16)
    record = train_probes(detect, "detect", ProbeConfig(kind="linear", max_epochs=3), [0], tmp_path / "probe",
                          progress=False)
    card = card_on_store(tmp_path / "probe", fine)
    test_images = sum(1 for r in range(24) if r % 4 == 0)  # synthetic_store's test split
    assert card["catalog"] == "fine" and card["test_images"] == test_images
    assert card["threshold"] == record["detector"]["threshold"]
    assert card["counts"] == {"originals": test_images, "manipulated": 30 * test_images}
    other = Store.open(fine)
    (other.path / "manifest.json").write_text(__import__("json").dumps({**other.manifest, "encoder": "another"}))
    with pytest.raises(StoreCardError, match="embedded by another"):
        card_on_store(tmp_path / "probe", fine)


def test_the_layerwise_table_finds_the_block_that_holds_the_edit(tmp_path):
    """Block b's statistics carry each version's signature and the embedding is noise: the
    probe on b reads the edit and the embedding's sits near chance (31 classes: 0.03)."""
    from equiprobe.trainer.layerwise import layerwise_table

    split = lambda r: ("train", "train", "validation", "test")[r % 4]  # noqa: E731
    synthetic_store(tmp_path / "plain", "fine", images=48, dim=6, noise=0.3, split=split)
    plain = Store.open(tmp_path / "plain")
    manifest = {**plain.manifest, "dim": 8, "features_dim": 6, "feature_layout": FeatureTaps((("b", 3),)).columns()}
    store = Store.create_or_resume(tmp_path / "s", manifest)
    writer, rng = StoreWriter(store), np.random.default_rng(1)
    signatures = np.asarray(plain.array("embeddings"), np.float32)
    for r in range(48):
        writer.put(r, embeddings=rng.normal(size=(31, 8)), params=np.asarray(plain.array("params")[r]),
                   key=f"img{r:03d}", image_key=f"{r:016x}", label=-1, split=split(r), index=r, features=signatures[r])
    writer.commit(list(range(48)))
    rows = {row["block"]: row for row in layerwise_table(tmp_path / "s", progress=False)["rows"]}
    assert list(rows) == ["b", "embedding", "all"]
    assert rows["b"]["test_accuracy"] > 0.6 and rows["embedding"]["test_accuracy"] < 0.15
    assert rows["b"]["test_auc"] > 0.8 and rows["all"]["test_accuracy"] > rows["embedding"]["test_accuracy"] + 0.3
    assert all(row["C"] in (0.01, 0.1, 1.0) and row["columns"] == width for row, width in
               zip(rows.values(), (6, 8, 14)))


@pytest.mark.parametrize("part", ["train", "val", "test"])
def test_examples_kept_in_memory_are_the_ones_read_by_memory_map(part, tmp_path, monkeypatch):
    """ProbeData.resident: a part read once gives every batch the memory map would, in order."""
    from equiprobe.trainer import data as probe_data

    store = features_store(tmp_path / "s", images=16)
    split = lambda: ProbeData.from_store(store, Task.from_store(store, "fine"), features=True)  # noqa: E731
    kept = split()
    assert kept.resident(part) is not None
    monkeypatch.setattr(probe_data, "RESIDENT_BYTES", 0)
    mapped = split()
    assert mapped.resident(part) is None
    pairs = list(zip(kept.batches(part, 7, shuffle_seed=5), mapped.batches(part, 7, shuffle_seed=5)))
    assert len(pairs) == -(-len(kept.examples(part)[0]) // 7)
    for a, b in pairs:
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
