"""A plain multi-layer perceptron (the box heads and positional-query heads of DETR models)."""
from torch import nn


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (none after the last).

    Shapes: [..., input_dim] -> [..., output_dim].
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        if num_layers < 1:
            raise ValueError("an MLP needs at least one layer")
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = x.relu()
        return x
