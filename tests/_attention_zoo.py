"""Small attention functions shared by the backend-level tests."""
import torch
import torch.nn.functional as F


def attention(q, k, v):
    w = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    return w.softmax(dim=-1) @ v


def attention_with_classifier(q, k, v, logits):
    # One attention site and one softmax that is not attention.
    return attention(q, k, v), F.softmax(logits, dim=-1)


def qkv(b=2, h=4, s=33, d=16, dtype=torch.float32, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(b, h, s, d, generator=g, dtype=dtype).requires_grad_(requires_grad)
        for _ in range(3)
    ]
