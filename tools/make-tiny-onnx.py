"""Writes fixtures/onnx/tiny-linear.onnx, a 2-input graph for the inference-pool tests (no model package needed):
    y[B,2] = x[B,4] @ W + b + scale   (scale: float32 [1])
Regenerate: /usr/bin/python3 tools/make-tiny-onnx.py   (PyTorch 1.13, opset 17, seeded)
"""
import torch

torch.manual_seed(0)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x, scale):
        return self.linear(x) + scale


model = Tiny().eval()
torch.onnx.export(
    model,
    (torch.randn(3, 4), torch.ones(1)),
    "fixtures/onnx/tiny-linear.onnx",
    opset_version=17,
    input_names=["x", "scale"],
    output_names=["y"],
    dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
)
with torch.no_grad():
    x = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    print("weights", model.linear.weight.tolist(), model.linear.bias.tolist())
    print("y for arange(8).reshape(2,4), scale 1:", model(x, torch.ones(1)).tolist())
