"""BatchStream: batches made by worker processes arrive exactly as the worker made them, small
tensors sent inside the pickled batch and large ones through shared memory."""
import torch

from polyfuse.data.loader import INLINE_BYTES, BatchStream, in_order


def _batch(idx):
    n = len(idx)
    g = torch.Generator().manual_seed(idx[0])
    return {"inputs": {"x": {"ids": torch.tensor(idx) * 7, "mask": torch.arange(n) % 2 == 0,
                             "half": torch.randn(n, 3, generator=g).to(torch.bfloat16),
                             "empty": torch.zeros(0, 4),
                             "big": torch.randn(n, INLINE_BYTES // 4, generator=g),       # > INLINE_BYTES
                             "strided": torch.randn(4, n, generator=g).t(),               # not contiguous
                             "modality": "text"}},
            "rows": [torch.tensor(i) for i in idx], "pair": (torch.ones(2), 3)}


def _same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert a == b


def test_worker_batches_equal_main_process_batches():
    order = in_order(50, 8)
    serial = list(BatchStream(_batch, 0)(order))
    parallel = list(BatchStream(_batch, 2)(order))
    assert len(serial) == len(parallel) == 7
    for a, b in zip(serial, parallel):
        _same(a, b)
    # the restored small tensors are writable tensors of their own, not views of a read-only buffer
    b = parallel[0]["inputs"]["x"]["ids"]
    b += 1
    assert torch.equal(b, serial[0]["inputs"]["x"]["ids"] + 1)
