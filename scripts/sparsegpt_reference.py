"""Independent PyTorch reference for sparsetune's SparseGPT N:M masks (src/masks/sparsegpt.ts).

Written from the SparseGPT paper's algorithm (Frantar & Alistarh, 2023): H = X^T X damped by 1% of
its mean diagonal, U = upper Cholesky factor of H^-1 (torch.linalg.cholesky + cholesky_inverse),
per group of M inputs keep the N largest w^2 / U_jj^2, and optionally propagate each pruned
column's error to the later columns. Writes test/fixtures/sparsegpt-reference.json with the
inputs (so the TypeScript test uses the same numbers) and the masks / compensated weights.

Usage: /usr/bin/python3 scripts/sparsegpt_reference.py
"""
import json
import os

import torch


def sparsegpt(w: torch.Tensor, h: torch.Tensor, n: int, m: int, update: bool, percdamp: float = 0.01):
    w = w.clone().double()
    h = h.clone().double()
    cols = w.shape[1]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += percdamp * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=torch.float64)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    mask = torch.ones_like(w, dtype=torch.bool)
    for i in range(cols):
        if i % m == 0:
            sal = w[:, i : i + m] ** 2 / torch.diag(u)[i : i + m].reshape(1, -1) ** 2
            # Keep the n largest (ties: lower position), i.e. drop the rest.
            order = torch.argsort(-sal, dim=1, stable=True)
            for r in range(w.shape[0]):
                for k in order[r, n:]:
                    mask[r, i + int(k)] = False
        if update:
            q = torch.where(mask[:, i], w[:, i], torch.zeros_like(w[:, i]))
            err = (w[:, i] - q) / u[i, i]
            w[:, i:] -= err.unsqueeze(1) * u[i, i:].unsqueeze(0)
            w[:, i] = q
    return mask, w * mask


def main() -> None:
    g = torch.Generator().manual_seed(1234)
    rows, cols, tokens = 6, 16, 40
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64).float()
    mix = torch.randn(cols, cols, generator=g, dtype=torch.float64) * 0.5 + torch.eye(cols, dtype=torch.float64)
    x = (torch.randn(tokens, cols, generator=g, dtype=torch.float64) @ mix).float()
    x[:, 5] = 0  # a dead input
    h = x.double().T @ x.double()
    out = {"rows": rows, "cols": cols, "n": 2, "m": 4, "weight": w.flatten().tolist(), "hessian": h.flatten().tolist()}
    for update in (False, True):
        mask, wq = sparsegpt(w.double(), h, 2, 4, update)
        key = "update" if update else "mask_only"
        out[key] = {"mask": mask.int().flatten().tolist(), "weights": wq.flatten().tolist()}
    path = os.path.join(os.path.dirname(__file__), "..", "test", "fixtures", "sparsegpt-reference.json")
    with open(path, "w") as f:
        json.dump(out, f)
    print(f"wrote {os.path.normpath(path)}")


if __name__ == "__main__":
    main()
