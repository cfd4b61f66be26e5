"""Transforms-2D: a synthetic dataset where every factor of variation is known (object, background,
the parameters of 8 transformation categories), and the invariance-transfer experiments of
"Invariance makes a difference: disentangling the role of invariance and equivariance in
representations", for models trained here and for frozen encoders served by Triton.

    prototypes.py    object prototypes with alpha: colour emoji of Debian's fonts-noto-color-emoji
    backgrounds.py   background crops of the built-in photo corpus, train/val/test from disjoint sources
    transforms2d.py  the 8 categories (a registry of declared entries), rendered on batches in torch
    generate.py      the deterministic dataset: specs, per-sample parameters, ImageFolder or tar shards
    models.py        CIFAR-style resnet18, vgg11, densenet121 and a small CNN
    training.py      Adam training, penultimate features, last-layer fine-tuning
    experiments.py   the experiments' registry (transfer, subsets, classes, single, irrelevant,
                     relevance, availability) and their profiles
    fmnist.py        the irrelevant-feature datasets: small objects pasted onto Fashion-MNIST
    figures.py       each experiment's figure (matplotlib PNG)
    frozen.py        the transfer datasets embedded by a served encoder: linear probes and G-EED
"""
