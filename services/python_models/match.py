"""`NAME_match`: an index of known images and its reference-aware probe (services/matching.py).

The deployed version directory is the index directory (services/match_index.py), copied whole by
`equiprobe deploy --index`. It is loaded once, in initialize: a missing or corrupt file fails the
model's load with one line naming the file (the server and its other models keep serving). The
dynamic batcher's requests are searched together: one faiss search and one probe run a batch.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from equiprobe.services.contract import EMBEDDING, FEATURES, MATCH_OUTPUTS
from equiprobe.services.match_index import MatchIndexError
from equiprobe.services.matching import DEFAULT_K, ServedIndex
from equiprobe.services.python_models.common import internal_error, model_parameters


class TritonPythonModel:
    def initialize(self, args):
        config, params, version_dir = model_parameters(args)
        self.model = f"{args['model_name']} version {args['model_version']}"
        self.features = FEATURES in {i["name"] for i in config["input"]}
        try:
            self.served = ServedIndex.load(version_dir, int(params.get("k", DEFAULT_K)),
                                           float(params["copy_threshold"]), int(params.get("intra_op_threads", "1")),
                                           params.get("faiss_device", "cpu"),
                                           int(args.get("model_instance_device_id") or 0))
        except MatchIndexError as exc:
            raise pb_utils.TritonModelException(f"{self.model} cannot load its index: {exc}") from None
        if self.features != bool(self.served.features_dim):
            raise pb_utils.TritonModelException(f"{self.model}: the config {'takes' if self.features else 'lacks'} "
                                                f"{FEATURES}, the index's references have {self.served.features_dim}")

    def execute(self, requests):
        embeddings = [pb_utils.get_input_tensor_by_name(r, EMBEDDING).as_numpy() for r in requests]
        features = ([pb_utils.get_input_tensor_by_name(r, FEATURES).as_numpy() for r in requests]
                    if self.features else None)
        try:
            out = self.served.match(np.concatenate(embeddings), np.concatenate(features) if features else None)
        except Exception as exc:  # ours, not the request's: Triton checked the shapes
            return [internal_error(f"{self.model} failed: {type(exc).__name__}: {exc}") for _ in requests]
        splits = np.cumsum([len(e) for e in embeddings])[:-1]
        parts = {name: np.split(out[name], splits) for name in MATCH_OUTPUTS}
        return [pb_utils.InferenceResponse([pb_utils.Tensor(name, parts[name][i]) for name in MATCH_OUTPUTS])
                for i in range(len(requests))]
