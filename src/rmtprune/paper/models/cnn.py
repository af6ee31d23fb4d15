"""The paper's convolutional network (docs/method.md section 6; experiments cnn-mnist, cnn-fashion).

Five 3×3 convolutions without padding (channels 32, 64, 128, 256, 512), each
followed by ReLU and BatchNorm; 2×2 max-pooling after the 3rd and the 5th
convolution, each pooling followed by dropout (p = 0.35); then the classifier
``Linear(flat, 1000) → BatchNorm1d → ReLU → Dropout → Linear(1000, 10)`` and
``log_softmax`` over the classes (dim 1).  Dropout is a module, so it is off
in ``eval()`` mode (the authors' notebook kept it on, docs/method.md section 8).

For 28×28 inputs the spatial size goes 26, 24, 22 → 11, 9, 7 → 3, so the
flattened size is ``512 · 3 · 3 = 4608``.

Example
-------
>>> import torch
>>> from rmtprune.paper.models import PaperCNN
>>> net = PaperCNN()
>>> net.flat_features
4608
>>> net.eval()(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rmtprune._util.validation import check_int, check_real, param_error

__all__ = ["PaperCNN", "conv_output_size"]


def conv_output_size(
    input_size: int, n_convs: int, pool_after: Sequence[int] = (3, 5), kernel_size: int = 3
) -> int:
    """Spatial size after ``n_convs`` unpadded convolutions with pooling after some of them.

    Each convolution removes ``kernel_size - 1`` pixels, each 2×2 max-pooling
    halves the size (rounding down).

    Examples
    --------
    >>> conv_output_size(28, 5)
    3
    >>> conv_output_size(32, 5)
    4
    """
    size = check_int(input_size, "input_size", "conv_output_size", low=1)
    for i in range(1, check_int(n_convs, "n_convs", "conv_output_size", low=0) + 1):
        size -= kernel_size - 1
        if i in pool_after:
            size //= 2
        if size < 1:
            raise param_error(
                "input_size",
                "conv_output_size",
                f"large enough for {n_convs} unpadded {kernel_size}×{kernel_size} convolutions",
                input_size,
            )
    return size


class PaperCNN(nn.Module):
    """Convolutional classifier of the paper's section 3.2.2.

    Parameters
    ----------
    in_channels : int
        Image channels (1 for MNIST-likes, 3 for CIFAR-10).
    num_classes : int
        Number of classes.
    channels : sequence of int
        Output channels of the successive 3×3 convolutions.
    fc_width : int
        Width of the hidden fully connected layer.
    dropout : float
        Dropout probability in ``[0, 1)``, after each pooling and after the
        hidden fully connected layer.
    input_size : int
        Height (= width) of the input images.
    pool_after : sequence of int
        1-based indices of the convolutions followed by 2×2 max-pooling.

    Attributes
    ----------
    features : torch.nn.Sequential
        Convolutional part; convolutions are ``features.0``, ``features.3``, ….
    classifier : torch.nn.Sequential
        ``Linear, BatchNorm1d, ReLU, Dropout, Linear`` (``classifier.0`` and
        ``classifier.4`` are the Linear layers).
    flat_features : int
        Size of the flattened feature vector, ``channels[-1] · s²``.

    Examples
    --------
    >>> PaperCNN(in_channels=3, input_size=32).flat_features
    8192
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        fc_width: int = 1000,
        dropout: float = 0.35,
        input_size: int = 28,
        pool_after: Sequence[int] = (3, 5),
    ) -> None:
        super().__init__()
        owner = "PaperCNN"
        in_channels = check_int(in_channels, "in_channels", owner, low=1)
        num_classes = check_int(num_classes, "num_classes", owner, low=2)
        fc_width = check_int(fc_width, "fc_width", owner, low=1)
        dropout = check_real(dropout, "dropout", owner, low=0.0, high=1.0, high_open=True)
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not channels:
            raise param_error("channels", owner, "a non-empty sequence of ints", channels)
        chans = [check_int(c, "channels", owner, low=1) for c in channels]
        pools = tuple(check_int(i, "pool_after", owner, low=1) for i in pool_after)
        size = conv_output_size(input_size, len(chans), pools)
        layers: list[nn.Module] = []
        previous = in_channels
        for i, out in enumerate(chans, start=1):
            layers += [nn.Conv2d(previous, out, kernel_size=3), nn.ReLU(), nn.BatchNorm2d(out)]
            if i in pools:
                layers += [nn.MaxPool2d(2), nn.Dropout(dropout)]
            previous = out
        self.features = nn.Sequential(*layers)
        self.flat_features = chans[-1] * size * size
        self.classifier = nn.Sequential(
            nn.Linear(self.flat_features, fc_width),
            nn.BatchNorm1d(fc_width),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(fc_width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the classes, shape ``(batch, num_classes)``."""
        return torch.log_softmax(self.classifier(self.features(x).flatten(1)), dim=1)
