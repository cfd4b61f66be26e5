"""Every benchmark behind `equiprobe bench ...` (the options and tables are trainer/cli/bench.py's).

    harness.py        what they share: the bench repository, the photos, `bench_server` (repository
                      -> loopback tritonserver -> measure -> stop), requests from client threads
    serve.py          bench serve: NAME_embed through Triton gRPC vs in-process DALI + ONNX Runtime
    server_usage.py   RSS and CPU time of the server's processes, by model (bench serve, embed)
    precision.py      bench serve --int8: the INT8 encoder against FP32, alternating
    perf_analyzer.py  bench perf-analyzer: NVIDIA's perf_analyzer, next to bench serve's rows
    detector.py       bench detector: what FEATURES cost in-process; NAME_detector vs NAME_embed served
    expansion.py      bench transforms, bench expansion: the 31-version expansion, served vs client-side,
                      DALI vs Pillow, and each stage's CPU
    embed.py          bench embed: `equiprobe embed` end to end vs each stage alone and a naive loop
    soak.py           bench soak: mixed good and bad uploads for minutes; outcomes and RSS over time
    match.py          bench match: NAME_matcher vs NAME_embed vs faiss alone; index memory per million
    training.py       bench train: torch probes vs scikit-learn's logistic regression; store read rate

(`equiprobe t2d bench` is the Transforms-2D study's own, trainer/t2d/bench.py.)
"""
